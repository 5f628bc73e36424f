"""The deposit decision, one row per case: money is announced only when it can be, held with the reason otherwise."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal as D

import pytest

from batch.domain.deposit import Credit, decide_deposit
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
