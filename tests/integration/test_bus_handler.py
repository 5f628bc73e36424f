"""The listener's handling of InvestSuite's bus events, against real PostgreSQL and the sandbox over HTTP.

Each test hands raw message bodies to the handler ``batch listen`` uses and checks the inbox, the
registry, the journal, the ledger and the sandbox afterwards. (The bus itself: tests/e2e/test_listener.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from batch.adapters.postgres import Dsns
from batch.bootstrap import App
from batch.sandbox.seed_deposits import seed_deposits
from batch.service.bus.events import Verdict
from batch.service.bus.withdrawal import PlanAndExecute
from tests.fixtures.sandbox import RunningSandbox, SandboxState
from tests.integration.bus_support import Wired, event, listener_handler, minutes_ago, withdrawal
from tests.integration.payout_support import (
    OneRun,
    add_customer,
    app_for,
    decisions_of,
    divest_of,
    holdings_cash,
    journal_rows,
    ledger_payouts,
    make_settings,
    payouts_of,
    withdraw_events,
)


@pytest.fixture
def app(sandbox: RunningSandbox, dsns: Dsns, tmp_path: Path) -> Iterator[App]:
    with app_for(make_settings(sandbox.base_url, tmp_path), dsns) as wired:
        yield wired


@pytest.fixture
def wired(app: App) -> Iterator[Wired]:
    with listener_handler(app) as w:
        yield w


def test_withdrawal_event_pays_with_the_nightly_evidence(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A divest-amount-update is planned from a fresh GET and paid: ledger, transaction, PATCH and event."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("250.00"), cash=Decimal("1000.00"))
    handled = wired.handler.handle(withdrawal(doc, "250.00", event_id="ev-pay"))
    assert handled.verdict is Verdict.ACK and handled.status == "HANDLED", handled
    assert "PAY PARTIAL" in handled.outcome and "COMPLETED" in handled.outcome
    [payout] = payouts_of(app, doc["id"])
    assert payout.state == "COMPLETED" and payout.amount == Decimal("250.00")
    assert [t["amount"] for t in ledger_payouts(dsns, doc["external_id"])] == [Decimal("250.00")]
    assert holdings_cash(sandbox_store, doc["id"]) == Decimal("750.00")
    assert divest_of(sandbox_store, doc["id"]) == 0
    [tx] = sandbox_store.transactions(doc["id"])
    assert tx["external_id"] == payout.ledger_reference
    assert [e["data"]["amount"] for e in withdraw_events(sandbox_store, doc["id"])] == ["250.00"]
    row = wired.store.inbox_row("ev-pay")
    assert row is not None and row["status"] == "HANDLED" and row["kind"] == "withdrawal"
    assert row["run_id"] == payout.run_id
    run = app.journal.get_run(payout.run_id)
    assert run is not None and run["trigger"] == "listener"


def test_the_event_amount_is_only_a_trigger(wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns) -> None:
    """The payout is what InvestSuite says now (GET), not what the event carried."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("40.00"))
    wired.handler.handle(withdrawal(doc, "999.99"))
    [payout] = payouts_of(app, doc["id"])
    assert payout.amount == Decimal("40.00")


def test_duplicate_event_id_is_recorded_and_dropped(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """The same event id delivered twice pays once; the inbox counts the duplicate."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    body = withdrawal(doc, "100.00", event_id="ev-dup")
    first, second = wired.handler.handle(body), wired.handler.handle(body)
    assert (first.status, second.status) == ("HANDLED", "DUPLICATE")
    assert second.verdict is Verdict.ACK
    assert len(payouts_of(app, doc["id"])) == 1
    row = wired.store.inbox_row("ev-dup")
    assert row is not None and row["duplicates"] == 1 and row["attempts"] == 1


def test_older_event_than_the_last_handled_is_stale(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """An event created before the last one handled for that portfolio is recorded STALE and changes nothing."""
    doc = add_customer(sandbox_store, dsns, divest=None)
    newer = wired.handler.handle(event("status-update", {"id": doc["id"], "value": "ACTIVE"}, created=minutes_ago(1)))
    older = wired.handler.handle(event("status-update", {"id": doc["id"], "value": "INACTIVE"}, created=minutes_ago(5)))
    assert (newer.status, older.status) == ("HANDLED", "STALE")
    entry = wired.store.registry_entry(doc["id"])
    assert entry is not None and entry["status"] == "ACTIVE"


def test_insufficient_cash_defers_as_in_the_batch_flow(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """A request above the cash is a DEFER INSUFFICIENT_CASH decision and no payout."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("5000.00"), cash=Decimal("100.00"))
    handled = wired.handler.handle(withdrawal(doc, "5000.00"))
    assert handled.outcome.startswith("DEFER INSUFFICIENT_CASH")
    assert payouts_of(app, doc["id"]) == []


def test_creation_stores_the_link_in_the_registry(wired: Wired) -> None:
    """portfolios.creation (and portfolio.creation) records portfolio id, external id and owner."""
    wired.handler.handle(
        event("creation", {"id": "P1", "external_id": "BANK-1", "owned_by_user_id": "U1"}, event_id="c1")
    )
    again = wired.handler.handle(event("creation", {"id": "P1", "external_id": "BANK-1"}, subject="portfolio"))
    entry = wired.store.registry_entry("P1")
    assert entry is not None
    assert (entry["external_id"], entry["owner_user_id"], entry["source_event_id"]) == ("BANK-1", "U1", "c1")
    assert again.outcome == "already registered: last seen updated"
    assert [e["portfolio_id"] for e in wired.store.registry_by_external_id("BANK-1")] == ["P1"]


def test_inactive_cancels_a_payout_that_has_not_reached_the_ledger(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """status-update INACTIVE cancels the open PLANNED payout and revises its decision, audited."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    OneRun(app).plan([doc["id"]])
    handled = wired.handler.handle(event("status-update", {"id": doc["id"], "value": "INACTIVE"}))
    assert "cancelled before the ledger" in handled.outcome
    [payout] = payouts_of(app, doc["id"])
    assert payout.state == "CANCELLED"
    [decision] = decisions_of(app, doc["id"])
    assert (decision["final_decision"], decision["final_reason"]) == ("SKIP", "PORTFOLIO_INACTIVE")
    assert ledger_payouts(dsns, doc["external_id"]) == []
    audit = journal_rows(
        app, "SELECT details FROM batch.audit_log WHERE payout_id = :p AND action = 'payout.cancelled'", p=payout.id
    )
    assert len(audit) == 1


def test_removal_past_the_ledger_is_left_to_complete(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns, sandbox: RunningSandbox
) -> None:
    """A removal finds a payout already past the ledger: it is not cancelled, and the inbox says so."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    run = OneRun(app)
    run.plan([doc["id"]])
    # InvestSuite refuses the transaction for now: the payout stalls right after its ledger post
    sandbox.admin.set_faults(error_rate=1.0, methods=["POST"], path_prefixes=["/portfolios/"])
    run.execute(max_step_attempts=1)
    sandbox.admin.set_faults()
    handled = wired.handler.handle(event("removal", {"id": doc["id"]}))
    assert "past the ledger" in handled.outcome and "left to complete" in handled.outcome
    [payout] = payouts_of(app, doc["id"])
    assert payout.state == "LEDGER_POSTED"
    entry = wired.store.registry_entry(doc["id"])
    assert entry is not None and entry["removed_at"] is not None


def test_a_second_planner_for_the_same_portfolio_defers(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """Planned first by the nightly run: the listener DEFERs PAYOUT_IN_PROGRESS and completes that one payout."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    OneRun(app).plan([doc["id"]])
    handled = wired.handler.handle(withdrawal(doc, "100.00"))
    assert handled.outcome.startswith("DEFER PAYOUT_IN_PROGRESS"), handled.outcome
    [payout] = payouts_of(app, doc["id"])
    assert payout.state == "COMPLETED"
    assert len(ledger_payouts(dsns, doc["external_id"])) == 1


def test_lowered_amount_cancels_the_planned_payout_and_pays_the_new_one(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns, sandbox: RunningSandbox
) -> None:
    """Planned at 100, lowered to 60 before the ledger post: the old payout is cancelled, 60 is paid."""
    doc = add_customer(sandbox_store, dsns, divest=Decimal("100.00"))
    OneRun(app).plan([doc["id"]])
    httpx.put(
        f"{sandbox.base_url}/_sandbox/portfolios/{doc['id']}/divest", json={"divest_amount": 60}
    ).raise_for_status()
    handled = wired.handler.handle(withdrawal(doc, "60"))
    payouts = sorted(payouts_of(app, doc["id"]), key=lambda p: p.created_at)
    assert [(p.state, p.amount) for p in payouts] == [("CANCELLED", Decimal("100.00")), ("COMPLETED", Decimal("60.00"))]
    assert [t["amount"] for t in ledger_payouts(dsns, doc["external_id"])] == [Decimal("60.00")]
    assert "COMPLETED" in handled.outcome


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (
            b'{"created": "2026-11-30T10:00:00Z", "version": "1.0.0", "subject": "portfolios", "action": "creation",'
            b' "data": {}}',
            "bad envelope",
        ),
        (
            b'{"id": "x1", "created": "2026-11-30T10:00:00", "version": "1.0.0", "subject": "portfolios",'
            b' "action": "creation", "data": {"id": "P1"}}',
            "bad envelope",
        ),
        (
            b'{"id": "x2", "created": "2026-11-30T10:00:00Z", "version": "1.0.0", "subject": "portfolios",'
            b' "action": "divest-amount-update", "data": {"divest_amount": 10}}',
            "bad withdrawal data",
        ),
    ],
)
def test_poison_is_dead_lettered_with_its_reason(wired: Wired, body: bytes, reason: str) -> None:
    """Invalid JSON, a missing id, a naive timestamp, data without a portfolio id: dead-lettered, recorded."""
    handled = wired.handler.handle(body)
    assert handled.verdict is Verdict.DEAD_LETTER and reason in handled.outcome
    rows = journal_rows_of(wired, "SELECT status, outcome FROM batch.bus_inbox WHERE status = 'DEAD_LETTERED'")
    assert len(rows) == 1 and reason in rows[0]["outcome"]


def test_unknown_events_are_recorded_and_acknowledged(wired: Wired) -> None:
    """Another subject, an unknown action, a future major version: IGNORED and acknowledged."""
    bodies = [
        event("status-update", {"id": "O1", "portfolio_id": "P9", "value": "SUCCESS"}, subject="optimizations"),
        event("renamed", {"id": "P9"}),
        event("creation", {"id": "P9"}, version="2.0.0"),
    ]
    results = [wired.handler.handle(b) for b in bodies]
    assert [(r.verdict, r.status) for r in results] == [(Verdict.ACK, "IGNORED")] * 3
    assert wired.store.registry_entry("P9") is None


def test_funding_places_the_new_incoming_credits_now(wired: Wired, dsns: Dsns) -> None:
    """portfolios.funding runs the deposit check: new credits are moved and announced once, held ones held."""
    cases = seed_deposits(dsns.sandbox, dsns.ledger)
    (credit,) = cases["deposit_active"]
    handled = wired.handler.handle(event("funding", {"id": "P7"}, event_id="f1"))
    assert handled.verdict is Verdict.ACK and "credit(s) decided" in handled.outcome, handled
    (op,) = journal_rows_of(wired, f"SELECT state, flow FROM batch.payouts WHERE credit_reference = '{credit}'")
    assert op == {"state": "COMPLETED", "flow": "DEPOSIT"}
    again = wired.handler.handle(event("funding", {"id": "P7"}, event_id="f2"))  # a second signal moves nothing
    assert "operations {}" in again.outcome
    moves = journal_rows_of(wired, "SELECT count(*) AS n FROM batch.payouts WHERE credit_reference IS NOT NULL")
    assert moves == [
        {
            "n": sum(
                len(cases[c]) for c in ("deposit_active", "deposit_waiting_for_funds", "deposit_jpy", "deposit_twice")
            )
        }
    ]


def journal_rows_of(wired: Wired, sql: str) -> list[dict[str, Any]]:
    with wired.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql))]


def test_documented_bare_bodies_and_placeholder_time_are_handled(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns
) -> None:
    """The Events page's bare funding and removal of one portfolio are both handled (no shared inbox key),
    and a withdrawal with the placeholder ``created`` is paid, and handled (never stale) after a newer one."""
    divest = Decimal("120.00")
    doc = add_customer(sandbox_store, dsns, divest=divest, cash=Decimal("900.00"))
    placeholder_time = b'"created": "-1000000000-01-01T00:00:00Z", "was": "'
    first = withdrawal(doc, "120.00", event_id="w-placeholder").replace(b'"created": "', placeholder_time)
    paid = wired.handler.handle(first)
    assert paid.status == "HANDLED" and "COMPLETED" in paid.outcome, paid
    assert paid.latency is None
    later = wired.handler.handle(withdrawal(doc, "0", event_id="w-now"))
    assert later.status == "HANDLED", later
    late = withdrawal(doc, "120.00", event_id="w-late").replace(b'"created": "', placeholder_time)
    again = wired.handler.handle(late)
    assert again.status == "HANDLED", again  # time unknown: never "older than everything"
    row = wired.store.inbox_row("w-placeholder")
    assert row is not None and row["created"] is None
    funding = json.dumps({"id": doc["id"], "value": 500, "currency": "EUR"}).encode()
    removal = json.dumps({"id": doc["id"]}).encode()
    by_key = wired.handler.handle(funding, routing_key="portfolio.funding")
    by_shape = wired.handler.handle(removal)
    assert (by_key.status, by_key.kind, by_shape.status, by_shape.kind) == ("HANDLED", "funding", "HANDLED", "removal")
    assert wired.handler.handle(removal).status == "DUPLICATE"  # the same bare body again: one inbox key
    kinds = journal_rows_of(wired, "SELECT kind, status FROM batch.bus_inbox WHERE event_id LIKE 'sha256:%'")
    assert sorted((r["kind"], r["status"]) for r in kinds) == [("funding", "HANDLED"), ("removal", "HANDLED")]
    [payout] = payouts_of(app, doc["id"])
    assert (payout.state, payout.amount) == ("COMPLETED", divest)


def test_undecodable_bodies_are_dead_lettered_and_recorded_by_message_id_or_digest(wired: Wired) -> None:
    """Bad UTF-8, truncated JSON, a wrong shape, an over-size body: DEAD_LETTER with the reason, in the inbox."""
    wired.handler.max_body_bytes = 1024
    cases = {
        "m-utf8": (b'{"id": "\xff"}', "not UTF-8"),
        "m-truncated": (b'{"id": "e1", "created": "2026-', "invalid JSON"),
        "m-shape": (b'{"id": "P1", "value": 1}', "neither an event envelope"),
        "m-size": (b'{"pad": "' + b"x" * 2000 + b'"}', "body of 2011 bytes"),
    }
    for message_id, (body, reason) in cases.items():
        handled = wired.handler.handle(body, message_id=message_id)
        assert (handled.verdict, handled.status) == (Verdict.DEAD_LETTER, "DEAD_LETTERED"), handled
        assert handled.outcome.startswith(reason), handled
        row = wired.store.inbox_row(f"message-id:{message_id}")
        assert row is not None and row["status"] == "DEAD_LETTERED" and row["outcome"].startswith(reason)
    anonymous = wired.handler.handle(b"{oops")
    assert anonymous.verdict is Verdict.DEAD_LETTER
    assert journal_rows_of(wired, "SELECT count(*) AS n FROM batch.bus_inbox WHERE event_id LIKE 'sha256:%'") == [
        {"n": 1}
    ]


def test_a_burst_is_planned_as_one_batch_and_each_paid_once(
    wired: Wired, app: App, sandbox_store: SandboxState, dsns: Dsns, sandbox: RunningSandbox
) -> None:
    """Twelve withdrawal events arriving together: one batch, one listing with owners embedded (no GET of a
    portfolio or user for planning), one ledger read; each event gets its own outcome, each paid once."""
    docs = [add_customer(sandbox_store, dsns, divest=Decimal("15.00"), cash=Decimal("100.00")) for _ in range(12)]
    trigger = wired.handler.withdrawals
    assert isinstance(trigger, PlanAndExecute)
    trigger.window, trigger.max_batch = 30.0, 12  # the first event waits until all twelve have joined
    sandbox.admin.reset_stats()
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(wired.handler.handle, withdrawal(d, "15.00")) for d in docs]
        results = [f.result(timeout=120) for f in futures]
    assert trigger.batch_sizes == [12]
    for doc, handled in zip(docs, results, strict=True):
        assert handled.status == "HANDLED" and "COMPLETED" in handled.outcome, handled
        [payout] = payouts_of(app, doc["id"])
        assert (payout.state, payout.amount) == ("COMPLETED", Decimal("15.00"))
        assert handled.outcome.count(str(payout.id)) == 1
    routes = sandbox.admin.stats()["by_route"]
    assert routes.get("GET /portfolios/", 0) >= 1 and routes.get("GET /users/{id}", 0) == 0
    # per payout the engine's own fresh reads remain (before the ledger post, and the read-back)
    assert routes.get("GET /portfolios/{id}", 0) <= 2 * len(docs)
