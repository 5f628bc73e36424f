"""The withdrawal announcement decision (broker integration by InvestSuite), one row per case, and its matching."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal as D

import pytest

from batch.adapters.ledger_bank_payouts import LedgerBankPayout
from batch.domain.announce import BankPayout, decide_announcement
from batch.domain.model import Decision, PortfolioView, Reason
from batch.service.reconcile.announcements import match_announcement
from batch.service.reconcile.rules import BreakType

PAYOUT = BankPayout("LT-1", "WDA-1", "BE71096123456769", D("300.00"), "EUR", date(2026, 11, 24))
PORTFOLIO = PortfolioView(
    portfolio_id="P1",
    external_id="WDA-1",
    owner_user_id="U1",
    base_currency="EUR",
    money_type="REAL_MONEY",
    status="ACTIVE",
    archived=False,
    deleted=False,
    divest_raw=None,
)


@pytest.mark.parametrize(
    ("payout", "portfolio", "decision", "reason"),
    [
        (PAYOUT, PORTFOLIO, Decision.PAY, Reason.BANK_PAYOUT),
        (PAYOUT, replace(PORTFOLIO, status="INACTIVE"), Decision.PAY, Reason.BANK_PAYOUT),
        (PAYOUT, replace(PORTFOLIO, archived=True), Decision.PAY, Reason.BANK_PAYOUT),
        (replace(PAYOUT, customer_account=None), None, Decision.HOLD, Reason.NO_BENEFICIARY),
        (PAYOUT, None, Decision.HOLD, Reason.UNMAPPED_ACCOUNT),
        (PAYOUT, replace(PORTFOLIO, deleted=True), Decision.HOLD, Reason.DELETED),
        (PAYOUT, replace(PORTFOLIO, money_type="PAPER_MONEY"), Decision.HOLD, Reason.PAPER_MONEY),
        (replace(PAYOUT, currency="USD"), PORTFOLIO, Decision.HOLD, Reason.CURRENCY_MISMATCH),
        (replace(PAYOUT, amount=D("10.005")), PORTFOLIO, Decision.HOLD, Reason.BELOW_MINOR_UNIT),
        (
            replace(PAYOUT, currency="XXX"),
            replace(PORTFOLIO, base_currency="XXX"),
            Decision.HOLD,
            Reason.INVALID_AMOUNT,
        ),
    ],
)
def test_a_bank_payout_is_announced_only_when_it_can_be(
    payout: BankPayout, portfolio: PortfolioView | None, decision: Decision, reason: Reason
) -> None:
    """REAL_MONEY, not deleted, in the base currency at its minor unit: announced; anything else held with why."""
    verdict = decide_announcement(payout, portfolio)
    assert (verdict.decision, verdict.reason) == (decision, reason)


LEDGER = LedgerBankPayout(7, "LT-1", "WDA-1", "BE71096123456769", D("300.00000000"), "EUR", date(2026, 11, 24))
DONE = {"operation_id": "op-1", "decision": "PAY", "state": "COMPLETED", "amount": D("300.00"), "currency": "EUR"}


@pytest.mark.parametrize(
    ("status", "bucket", "breaks"),
    [
        (DONE | {"event_status": 202}, "announced", []),
        (DONE | {"event_status": None}, "announced", [BreakType.EVENT_NOT_CONFIRMED]),
        (DONE | {"event_status": 202, "amount": D("299.99")}, "announced", [BreakType.AMOUNT_MISMATCH]),
        (DONE | {"state": "PLANNED", "event_status": None}, "in_progress", []),
        ({"decision": "HOLD"}, "held", []),
        ({}, "not_decided", [BreakType.BANK_PAYOUT_NOT_DECIDED]),
    ],
)
def test_each_bank_payout_of_the_date_lands_in_one_bucket_and_a_gap_is_a_break(
    status: dict[str, object], bucket: str, breaks: list[BreakType]
) -> None:
    """Announced, in progress or held adds up to the ledger; undecided, unconfirmed or another amount is a break."""
    found, found_breaks = match_announcement(LEDGER, status)
    assert (found, [b.type for b in found_breaks]) == (bucket, breaks)
