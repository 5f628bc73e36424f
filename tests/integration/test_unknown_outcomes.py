"""Unknown outcomes: a lost response makes the payout's next attempt read InvestSuite back before acting.

Real PostgreSQL and the real sandbox over HTTP. The sandbox commits the write and then answers 504
(``lose_response_rate=1.0`` restricted to the step's call); the executor's retry pause (its
injectable ``sleep``) is where the test switches the fault off or changes InvestSuite's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from batch.adapters.postgres import Dsns
from batch.bootstrap import App
from batch.domain.payout import PayoutState
from batch.sandbox.store import dumps, new_id
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.payout_support import (
    PATCH_ROUTE,
    POST_EVENT_ROUTE,
    POST_TX_ROUTE,
    OneRun,
    add_customer,
    app_for,
    audit_details,
    decision_of,
    divest_of,
    faults_cleared,
    holdings_cash,
    ledger_payouts,
    make_settings,
    portfolio_version,
    route_count,
    set_portfolio_doc,
    step_attempts,
    the_payout,
    withdraw_events,
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


def _on_first_pause(action: Callable[[], object]) -> Callable[[float], None]:
    """An executor ``sleep`` that runs ``action`` at the first retry pause only."""
    done: list[bool] = []

    def pause(_seconds: float) -> None:
        if not done:
            done.append(True)
            action()

    return pause


def _outcomes(app: App, payout_id: Any, step: str) -> list[str | None]:
    return [a["outcome"] for a in step_attempts(app, payout_id, step)]


def test_lost_transaction_response_is_adopted_by_external_id(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A POST transaction whose response was lost is found by external_id and adopted: one transaction exists."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    run = OneRun(app, sleep=_on_first_pause(sandbox.admin.set_faults))
    run.plan([doc["id"]])
    sandbox.admin.set_faults(lose_response_rate=1.0, methods=["POST"], path_prefixes=["/portfolios/"])
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED
    transactions = sandbox_store.transactions(doc["id"])
    assert len(transactions) == 1
    assert transactions[0]["external_id"] == payout.ledger_reference
    assert payout.transaction_id == transactions[0]["id"]
    assert _outcomes(app, payout.id, "RECORD_TRANSACTION") == ["TRANSIENT_ERROR", "ADOPTED"]
    assert route_count(sandbox, POST_TX_ROUTE) == 1
    assert len(ledger_payouts(dsns, doc["external_id"])) == 1


def test_lost_patch_response_is_detected_on_the_fresh_get(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A PATCH whose response was lost is seen applied on the fresh GET (cash == target): adopted, no second PATCH."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"), cash=Decimal("1000.00"))
    run = OneRun(app, sleep=_on_first_pause(sandbox.admin.set_faults))
    run.plan([doc["id"]])
    assert portfolio_version(sandbox_store, doc["id"]) == 1
    sandbox.admin.set_faults(lose_response_rate=1.0, methods=["PATCH"])
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED
    assert _outcomes(app, payout.id, "UPDATE_PORTFOLIO") == ["TRANSIENT_ERROR", "ADOPTED"]
    assert route_count(sandbox, PATCH_ROUTE) == 1
    assert portfolio_version(sandbox_store, doc["id"]) == 2  # exactly one PATCH was applied
    assert holdings_cash(sandbox_store, doc["id"]) == Decimal("900.00")
    assert Decimal(str(divest_of(sandbox_store, doc["id"]))) == 0


def test_lost_event_response_is_replayed_by_idempotency_key(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A withdraw event whose response was lost is resent with the same Idempotency-Key: one event exists."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    run = OneRun(app, sleep=_on_first_pause(sandbox.admin.set_faults))
    run.plan([doc["id"]])
    sandbox.admin.set_faults(lose_response_rate=1.0, methods=["POST"], path_prefixes=["/events/withdraw"])
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED
    assert _outcomes(app, payout.id, "SEND_EVENT") == ["TRANSIENT_ERROR", "OK"]
    events = withdraw_events(sandbox_store, doc["id"])
    assert len(events) == 1
    assert events[0]["idempotency_key"] == str(payout.id)
    assert events[0]["data"] == {"amount": "100.00", "currency": "EUR", "portfolio": doc["id"]}
    assert route_count(sandbox, POST_EVENT_ROUTE) == 2  # the lost one and its replay


def test_ambiguous_cash_after_unknown_patch_stops_for_a_human(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """Cash neither base nor target after an unknown PATCH outcome: NEEDS_ATTENTION with the evidence, no PATCH."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"), cash=Decimal("1000.00"))

    def customer_side_change() -> None:
        sandbox.admin.set_faults()
        set_portfolio_doc(sandbox_store, doc["id"], lambda d: d["portfolio"].__setitem__("$EUR", Decimal("950.00")))

    run = OneRun(app, sleep=_on_first_pause(customer_side_change))
    run.plan([doc["id"]])
    sandbox.admin.set_faults(lose_response_rate=1.0, methods=["PATCH"])
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.NEEDS_ATTENTION
    assert payout.failing_step == "UPDATE_PORTFOLIO"
    assert payout.last_error is not None and "neither the base nor the target" in payout.last_error
    assert route_count(sandbox, PATCH_ROUTE) == 1  # no guess: the lost PATCH is the only one
    assert holdings_cash(sandbox_store, doc["id"]) == Decimal("950.00")
    # the evidence: what we saw, what we expected, in the audit trail and the step attempts
    (attention,) = audit_details(app, payout.id, "payout.needs_attention")
    assert attention["step"] == "UPDATE_PORTFOLIO"
    evidence = {k: Decimal(attention["evidence"][k]) for k in ("cash_now", "base_cash", "target_cash")}
    assert evidence == {"cash_now": Decimal(950), "base_cash": Decimal(1000), "target_cash": Decimal(900)}
    attempts = step_attempts(app, payout.id, "UPDATE_PORTFOLIO")
    assert attempts[0]["outcome"] == "TRANSIENT_ERROR"
    assert attempts[-1]["outcome"] == "PERMANENT_ERROR"
    assert Decimal(attempts[-1]["detail"]["cash_now"]) == Decimal(950)
    assert Decimal(attempts[-1]["detail"]["target_cash"]) == Decimal(900)
    # the money left the ledger once and stays left: never cancelled, never rolled back
    assert len(ledger_payouts(dsns, doc["external_id"])) == 1
    assert decision_of(app, doc["id"])["final_decision"] is None


def test_two_transactions_with_our_external_id_stop_for_a_human(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """After a lost POST, two InvestSuite transactions carrying our external_id: NEEDS_ATTENTION, none adopted."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))

    def duplicate_appears() -> None:
        sandbox.admin.set_faults()
        (original,) = sandbox_store.transactions(doc["id"])
        copy = {**original, "id": new_id("T")}
        with psycopg.connect(sandbox_store.dsn) as conn:
            conn.execute(
                "INSERT INTO sandbox.transactions (id, portfolio_id, external_id, doc) VALUES (%s, %s, %s, %s::json)",
                [copy["id"], doc["id"], copy["external_id"], dumps(copy)],
            )

    run = OneRun(app, sleep=_on_first_pause(duplicate_appears))
    run.plan([doc["id"]])
    sandbox.admin.set_faults(lose_response_rate=1.0, methods=["POST"], path_prefixes=["/portfolios/"])
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.NEEDS_ATTENTION
    assert payout.failing_step == "RECORD_TRANSACTION"
    assert payout.last_error is not None and "2 InvestSuite transactions" in payout.last_error
    assert payout.transaction_id is None
    assert route_count(sandbox, POST_TX_ROUTE) == 1
    assert route_count(sandbox, PATCH_ROUTE) == 0
    assert len(step_attempts(app, payout.id, "RECORD_TRANSACTION")[-1]["detail"]["transaction_ids"]) == 2


def test_divest_raised_after_planning_is_patched_to_current_minus_paid(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """The customer raises the divest after planning: it is PATCHed to current - paid (not 0) and noted."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"), cash=Decimal("1000.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    set_portfolio_doc(
        sandbox_store,
        doc["id"],
        lambda d: d["config"]["manager_settings"].__setitem__("divest_amount", Decimal("300.00")),
    )
    run.execute()

    payout = the_payout(app, doc["id"])
    assert payout.state is PayoutState.COMPLETED
    assert payout.amount == Decimal("100.00")
    assert Decimal(str(divest_of(sandbox_store, doc["id"]))) == Decimal("200.00")
    assert holdings_cash(sandbox_store, doc["id"]) == Decimal("900.00")
    (attempt,) = step_attempts(app, payout.id, "UPDATE_PORTFOLIO")
    assert attempt["intent"]["divest_target"] == "200.00"
    assert attempt["detail"]["divest_changed_since_planning"] == {"snapshot": "100.00", "now": "300.00"}
    assert len(ledger_payouts(dsns, doc["external_id"])) == 1


def test_divest_raised_after_planning_is_noted_in_the_report(
    app: App, sandbox: RunningSandbox, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """The report line of a payout whose divest changed mid-flight says so."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    set_portfolio_doc(
        sandbox_store,
        doc["id"],
        lambda d: d["config"]["manager_settings"].__setitem__("divest_amount", Decimal("300.00")),
    )
    run.execute()
    report = run.finish()
    (line,) = [line for line in report.lines if line.portfolio_id == doc["id"]]
    assert line.note is not None and "divest" in line.note
