"""The fresh read before money moves: what counts as a change since planning, and what does not."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal as D

import pytest

from batch.domain.model import Decision, PortfolioView, Reason
from batch.domain.policy import Policy
from batch.domain.recheck import recheck
from batch.domain.records import PayoutRecord
from tests.factories import planned_payout

NOW = datetime(2026, 11, 30, tzinfo=UTC)
PAYOUT = planned_payout(
    "P1",
    business_date=date(2026, 11, 30),
    at=NOW,
    amount=D("500.00"),
    cash=D("1000.00"),
    divest="500.00",
    ledger_account="CASH-1",
)
VIEW = PortfolioView(
    portfolio_id="P1",
    external_id="CASH-1",
    owner_user_id="U1",
    base_currency="EUR",
    money_type="REAL_MONEY",
    status="ACTIVE",
    archived=False,
    deleted=False,
    divest_raw=D("500.00"),
    holdings={"$EUR": D("1000.00"), "IE00BK5BQT80": D(3)},
)
FULL = replace(PAYOUT, full_withdrawal=True, divest_snapshot="1E+100", amount=D("1000.00"))


@pytest.mark.parametrize(
    ("payout", "view", "decision", "says"),
    [
        (PAYOUT, None, Decision.SKIP, "no longer exists"),
        (PAYOUT, replace(VIEW, deleted=True), Decision.SKIP, "deleted"),
        (PAYOUT, replace(VIEW, archived=True), Decision.SKIP, "archived"),
        (PAYOUT, replace(VIEW, money_type="PAPER_MONEY"), Decision.SKIP, "money_type"),
        (PAYOUT, replace(VIEW, status="INACTIVE"), Decision.SKIP, "status"),
        (PAYOUT, replace(VIEW, divest_raw=D(0)), Decision.SKIP, "cancelled"),
        (PAYOUT, replace(VIEW, divest_raw=None), Decision.SKIP, "cancelled"),
        (PAYOUT, replace(VIEW, divest_raw=D("200.00")), Decision.DEFER, "lowered"),
        (PAYOUT, replace(VIEW, divest_raw="abc"), Decision.DEFER, "unreadable"),
        (PAYOUT, replace(VIEW, base_currency="USD"), Decision.DEFER, "currency"),
        (PAYOUT, replace(VIEW, holdings={"$EUR": D("499.99")}), Decision.DEFER, "cash"),
        (FULL, replace(VIEW, divest_raw=D("800")), Decision.DEFER, "partial"),
        (FULL, replace(VIEW, divest_raw=D("1E+100")), Decision.DEFER, "positions"),
    ],
    ids=[
        "gone",
        "deleted",
        "archived",
        "paper money",
        "status",
        "divest 0",
        "divest null",
        "divest lowered",
        "divest unreadable",
        "currency changed",
        "cash short",
        "full became partial",
        "positions re-opened",
    ],
)
def test_a_change_since_planning_stops_the_payout(
    payout: PayoutRecord, view: PortfolioView | None, decision: Decision, says: str
) -> None:
    """Each change since planning gives a DEFER or SKIP CHANGED_SINCE_PLANNING with the evidence."""
    change = recheck(payout, view, Policy())
    assert change is not None
    assert (change.decision, change.reason) == (decision, Reason.CHANGED_SINCE_PLANNING)
    assert says in change.what
    assert change.evidence["planned_amount"] == payout.amount


@pytest.mark.parametrize(
    ("payout", "view"),
    [
        (PAYOUT, VIEW),
        (PAYOUT, replace(VIEW, divest_raw=D("800.00"))),
        (PAYOUT, replace(VIEW, divest_raw=D("500.004"))),
        (PAYOUT, replace(VIEW, divest_raw=D("1E+100"))),
        (FULL, replace(VIEW, divest_raw=D("1E+100"), holdings={"$EUR": D("1000.00"), "IE00BK5BQT80": D(0)})),
    ],
    ids=["unchanged", "raised", "same at the minor unit", "raised to full", "full, positions sold"],
)
def test_an_unchanged_or_raised_request_is_paid_as_planned(payout: PayoutRecord, view: PortfolioView) -> None:
    """No change, a raise (the rest stays pending) or the same amount at the minor unit: paid as planned."""
    assert recheck(payout, view, Policy()) is None
