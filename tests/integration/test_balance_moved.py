"""The ledger balance moves between planning and execution: the ledger post re-checks it atomically.

Real PostgreSQL and the real sandbox over HTTP; the plan and the execution are driven separately so
a hold can be placed on the customer's ledger account in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from batch.adapters.postgres import Dsns
from batch.bootstrap import App
from batch.domain.payout import PayoutState
from batch.service.reports.render import RENDERERS
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import (
    PATCH_ROUTE,
    POST_EVENT_ROUTE,
    POST_TX_ROUTE,
    OneRun,
    add_customer,
    app_for,
    decision_of,
    divest_of,
    faults_cleared,
    holdings_cash,
    ledger_admin_call,
    ledger_payouts,
    make_settings,
    route_count,
    step_attempts,
    the_payout,
)


# One sandbox and one set of databases per module (starting them per test is most of a test's time);
# each test adds its own portfolios and plans only those, so the tests stay independent.
@pytest.fixture
def dsns(module_dsns: Dsns) -> Dsns:
    return module_dsns


@pytest.fixture
def sandbox(module_sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    with faults_cleared(module_sandbox) as running:
        yield running


@pytest.fixture
def app(sandbox: RunningSandbox, dsns: Dsns, tmp_path: Path) -> Iterator[App]:
    with app_for(make_settings(sandbox.base_url, tmp_path / "reports"), dsns) as built:
        yield built


def test_balance_reduced_after_planning_cancels_before_any_effect(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A hold placed after planning leaves too little cash: CANCELLED, DEFER BALANCE_CHANGED, nothing written."""
    short = add_customer(sandbox_store, dsns, divest=Decimal("500.00"), cash=Decimal("1000.00"))
    fine = add_customer(sandbox_store, dsns, divest=Decimal("100.00"), cash=Decimal("1000.00"))
    run = OneRun(app)
    run.plan([short["id"], fine["id"]])
    assert decision_of(app, short["id"])["decision"] == "PAY"
    ledger_admin_call(dsns, lambda admin: admin.place_hold(short["external_id"], Decimal("700.00"), "card"))
    sandbox.admin.reset_stats()
    run.execute()

    payout = the_payout(app, short["id"])
    assert payout.state is PayoutState.CANCELLED
    assert payout.ledger_reference is None
    assert payout.last_error == "BALANCE_CHANGED"
    decision = decision_of(app, short["id"])
    assert (decision["decision"], decision["reason"]) == ("PAY", "PARTIAL")  # the plan is kept as it was
    assert (decision["final_decision"], decision["final_reason"]) == ("DEFER", "BALANCE_CHANGED")
    (attempt,) = step_attempts(app, payout.id, "LEDGER_POST")
    assert attempt["outcome"] == "REFUSED"
    assert Decimal(attempt["detail"]["available"]) == Decimal("300.00")
    assert Decimal(attempt["detail"]["requested"]) == Decimal("500.00")
    assert [a["step"] for a in step_attempts(app, payout.id)] == ["LEDGER_POST"]
    # no ledger transfer and no InvestSuite write for it
    assert ledger_payouts(dsns, short["external_id"]) == []
    assert sandbox_store.transactions(short["id"]) == []
    assert holdings_cash(sandbox_store, short["id"]) == Decimal("1000.00")
    assert Decimal(str(divest_of(sandbox_store, short["id"]))) == Decimal("500.00")
    # the other customer was paid: exactly one write of each kind in the whole run
    assert the_payout(app, fine["id"]).state is PayoutState.COMPLETED
    assert route_count(sandbox, POST_TX_ROUTE) == 1
    assert route_count(sandbox, PATCH_ROUTE) == 1
    assert route_count(sandbox, POST_EVENT_ROUTE) == 1

    report = run.finish()
    (line,) = [line for line in report.lines if line.portfolio_id == short["id"]]
    assert (line.decision, line.reason, line.outcome) == ("DEFER", "BALANCE_CHANGED", "deferred")
    assert line.payout_state == "CANCELLED"
    assert line.paid is None
    assert line.ledger_reference is None
    totals = report.totals["EUR"]
    assert totals.count["deferred"] == 1 and totals.amount["paid"] == Decimal("100.00")
    assert report.checks_ok
    csv_text = RENDERERS["csv"](report)
    (csv_line,) = [row for row in csv_text.splitlines() if short["id"] in row]
    assert "DEFER" in csv_line and "BALANCE_CHANGED" in csv_line


def test_balance_reduced_to_exactly_the_amount_still_pays(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A hold that leaves exactly the payout amount available does not cancel it: paid once."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("500.00"), cash=Decimal("1000.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    ledger_admin_call(dsns, lambda admin: admin.place_hold(doc["external_id"], Decimal("500.00"), "card"))
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED
    assert [t["amount"] for t in ledger_payouts(dsns, doc["external_id"])] == [Decimal("500.00")]
    assert decision_of(app, doc["id"])["final_decision"] is None
