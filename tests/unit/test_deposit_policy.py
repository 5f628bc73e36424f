"""The deposit decision, one row per case: money is announced only when it can be, held with the reason otherwise."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal as D

import pytest

from batch.domain.deposit import (
    KEY_REUSED,
    REFUSED,
    Credit,
    DepositVerdict,
    decide_deposit,
    decide_stopped,
    refusal_kind,
)
from batch.domain.model import Decision, PortfolioView, Reason

CREDIT = Credit("LT-1", "CASH-1", D("1500.00"), "EUR", date(2026, 11, 30))
PORTFOLIO = PortfolioView(
    portfolio_id="P1",
    external_id="CASH-1",
    owner_user_id="U1",
    base_currency="EUR",
    money_type="REAL_MONEY",
    status="ACTIVE",
    archived=False,
    deleted=False,
    divest_raw=None,
)


@pytest.mark.parametrize(
    ("credit", "portfolio", "account", "decision", "reason"),
    [
        (CREDIT, PORTFOLIO, "EUR", Decision.PAY, Reason.DEPOSIT),
        (CREDIT, replace(PORTFOLIO, status="WAITING_FOR_FUNDS"), "EUR", Decision.PAY, Reason.DEPOSIT),
        (replace(CREDIT, beneficiary=None), None, None, Decision.HOLD, Reason.NO_BENEFICIARY),
        (CREDIT, None, "EUR", Decision.HOLD, Reason.UNMAPPED_ACCOUNT),
        (CREDIT, replace(PORTFOLIO, deleted=True), "EUR", Decision.HOLD, Reason.DELETED),
        (CREDIT, replace(PORTFOLIO, money_type="PAPER_MONEY"), None, Decision.HOLD, Reason.PAPER_MONEY),
        (CREDIT, replace(PORTFOLIO, archived=True), "EUR", Decision.HOLD, Reason.ARCHIVED),
        (CREDIT, replace(PORTFOLIO, status="INACTIVE"), "EUR", Decision.HOLD, Reason.STATUS_NOT_ALLOWED),
        (replace(CREDIT, currency="USD"), PORTFOLIO, "EUR", Decision.HOLD, Reason.CURRENCY_MISMATCH),
        (CREDIT, PORTFOLIO, None, Decision.HOLD, Reason.NO_LEDGER_ACCOUNT),
        (CREDIT, PORTFOLIO, "USD", Decision.HOLD, Reason.CURRENCY_MISMATCH),
        (replace(CREDIT, amount=D("10.005")), PORTFOLIO, "EUR", Decision.HOLD, Reason.BELOW_MINOR_UNIT),
        (replace(CREDIT, amount=D(0)), PORTFOLIO, "EUR", Decision.HOLD, Reason.INVALID_AMOUNT),
        (
            replace(CREDIT, currency="JPY", amount=D("50000")),
            replace(PORTFOLIO, base_currency="JPY"),
            "JPY",
            Decision.PAY,
            Reason.DEPOSIT,
        ),
    ],
    ids=[
        "active",
        "waiting for funds",
        "no beneficiary",
        "unmapped",
        "deleted",
        "paper money",
        "archived",
        "inactive",
        "credit not in the base currency",
        "no ledger account",
        "ledger account in another currency",
        "below the minor unit",
        "zero",
        "jpy",
    ],
)
def test_deposit_decision(
    credit: Credit, portfolio: PortfolioView | None, account: str | None, decision: Decision, reason: Reason
) -> None:
    """Each incoming credit case gets its decision and reason."""
    verdict = decide_deposit(credit, portfolio, account)
    assert (verdict.decision, verdict.reason) == (decision, reason)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            409,
            '{"title": "Business logic error", "detail": [{"loc": ["header", "Idempotency-Key"]}], "status": 409}',
            KEY_REUSED,
        ),
        (409, '{"title": "Business logic error", "detail": "portfolio P1 is archived", "status": 409}', REFUSED),
        (422, '{"title": "Validation error", "detail": [{"loc": ["body", "data", "currency"]}]}', REFUSED),
        (409, "Idempotency-Key was already used", KEY_REUSED),
        (409, "<html>conflict</html>", KEY_REUSED),  # in doubt: the reading that never undoes money
        (400, '{"title": "Bad request"}', KEY_REUSED),
    ],
)
def test_a_refused_deposit_event_is_read_from_its_body(status: int, body: str, kind: str) -> None:
    """A reused key and a refused portfolio are told apart; anything unclear is read as a reused key."""
    assert refusal_kind(status, body) == kind


def test_a_stopped_deposit_is_listed_never_placed_again() -> None:
    """NEEDS_ATTENTION holds as PAYOUT_NEEDS_ATTENTION; a reversed credit keeps the true reason or MOVE_REVERSED."""
    pay = DepositVerdict(Decision.PAY, Reason.DEPOSIT)
    archived = DepositVerdict(Decision.HOLD, Reason.ARCHIVED, "portfolio archived")
    attention = decide_stopped(pay, "NEEDS_ATTENTION", "event refused")
    assert (attention.decision, attention.reason) == (Decision.HOLD, Reason.PAYOUT_NEEDS_ATTENTION)
    assert "event refused" in attention.note
    assert decide_stopped(pay, "MOVE_REVERSED", None).reason is Reason.MOVE_REVERSED
    still = decide_stopped(archived, "MOVE_REVERSED", None)
    assert (still.decision, still.reason) == (Decision.HOLD, Reason.ARCHIVED)
