"""``batch listen`` end to end over real RabbitMQ and real Mosquitto (127.0.0.1; NATS too where cheap): the
sandbox publishes InvestSuite's events when a divest amount changes, the listener pays, and the databases
show it.

Skipped with a one-line reason when a broker does not answer (``.ci/run`` starts them).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.server import free_port
from tests.e2e.chaos_support import batch_command, batch_env
from tests.e2e.helpers import fetch
from tests.e2e.listener_support import (
    ListenerProcess,
    ListenerWorld,
    broker_missing,
    completed,
    inbox,
    listener_world,
    paid_counts,
    read_dead_letters,
    wait_until,
)
from tests.fixtures.sandbox import SandboxState
from tests.integration.bus_support import event, minutes_ago, withdrawal
from tests.integration.payout_support import add_customer

pytestmark = pytest.mark.slow


@contextmanager
def _world(dsns: Dsns, kind: str, tmp_path: Path, **kw: int) -> Iterator[ListenerWorld]:
    reason = broker_missing(kind)
    if reason:
        pytest.skip(reason)
    with listener_world(dsns, kind, tmp_path / kind, **kw) as world:
        yield world


@pytest.fixture
def listening(
    request: pytest.FixtureRequest, dsns: Dsns, tmp_path: Path
) -> Iterator[tuple[ListenerWorld, ListenerProcess]]:
    """A sandbox publishing to the bus named by the test's parameter, and a ready listener on it."""
    with _world(dsns, request.param, tmp_path) as world:
        listener = world.listener().start()
        try:
            listener.wait_ready()
            yield world, listener
        finally:
            listener.stop()


@pytest.mark.parametrize("listening", ["rabbitmq", "mqtt", "nats"], indirect=True)
def test_divest_change_in_the_sandbox_is_paid_through_the_bus(
    listening: tuple[ListenerWorld, ListenerProcess], dsns: Dsns, sandbox_store: SandboxState
) -> None:
    """A divest amount set as the app does -> event on the bus -> paid, with the nightly run's evidence."""
    world, listener = listening
    doc = add_customer(sandbox_store, dsns, divest=None, cash=Decimal("800.00"))
    world.set_divest(doc["id"], "300.00")
    wait_until(lambda: completed(dsns, [doc["id"]]) == 1, 60, "the payout")
    counts = paid_counts(dsns, {doc["id"]: doc["external_id"]})
    assert (counts.journal[doc["id"]], counts.ledger[doc["id"]]) == (1, 1)
    assert (counts.transactions[doc["id"]], counts.events[doc["id"]]) == (1, 1)
    [payout] = fetch(dsns.journal, "SELECT * FROM batch.payouts WHERE portfolio_id = %s", [doc["id"]])
    assert payout["amount"] == Decimal("300.00")
    after = sandbox_store.portfolio(doc["id"])
    assert after is not None
    assert after["portfolio"]["$EUR"] == Decimal("500.00")
    assert after["config"]["manager_settings"]["divest_amount"] == 0
    # the withdrawal event, and the one the job's own PATCH caused (divest back to 0), both handled
    wait_until(lambda: len([r for r in inbox(dsns) if r["status"] == "HANDLED"]) == 2, 30, "the echo event")
    handled = [r for r in inbox(dsns) if r["kind"] == "withdrawal"]
    assert [r["bus"] for r in handled] == [world.names.kind] * 2
    assert "COMPLETED" in handled[0]["outcome"] and "nothing requested" in handled[1]["outcome"]
    metric = f'batch_bus_events_handled_total{{bus="{world.names.kind}",kind="withdrawal",status="HANDLED"}} 2.0'
    assert metric in listener.metrics()


@pytest.mark.parametrize("listening", ["rabbitmq"], indirect=True)
def test_duplicates_out_of_order_and_poison_over_the_bus(
    listening: tuple[ListenerWorld, ListenerProcess], dsns: Dsns, sandbox_store: SandboxState
) -> None:
    """A duplicate id pays once, an older event is stale, poison is dead-lettered with its reason."""
    world, _ = listening
    doc = add_customer(sandbox_store, dsns, divest=Decimal("120.00"))
    other = add_customer(sandbox_store, dsns, divest=None)
    newer = event("status-update", {"id": other["id"], "value": "ACTIVE"}, event_id="s-new", created=minutes_ago(1))
    older = event("status-update", {"id": other["id"], "value": "INACTIVE"}, event_id="s-old", created=minutes_ago(9))
    pay = withdrawal(doc, "120.00", event_id="w-1")
    world.publish([pay, pay, b"{not json", newer])
    wait_until(lambda: completed(dsns, [doc["id"]]) == 1, 60, "the payout")
    wait_until(lambda: any(r["event_id"] == "s-new" and r["status"] == "HANDLED" for r in inbox(dsns)), 30, "s-new")
    world.publish([pay, older])
    wait_until(lambda: any(r["event_id"] == "s-old" for r in inbox(dsns)), 30, "the stale event")
    wait_until(lambda: next(r for r in inbox(dsns) if r["event_id"] == "w-1")["duplicates"] == 2, 30, "duplicates")
    rows = {r["event_id"]: r for r in inbox(dsns)}
    assert rows["w-1"]["status"] == "HANDLED" and rows["s-new"]["status"] == "HANDLED"
    assert rows["s-old"]["status"] == "STALE"
    assert paid_counts(dsns, {doc["id"]: doc["external_id"]}).ledger[doc["id"]] == 1
    [(body, reason)] = read_dead_letters(world.names, 1)
    assert body == b"{not json" and reason.startswith("invalid JSON")
    # recorded under the broker's message id (AMQP message-id, set by the publisher), else the body's digest
    poison = [r for r in rows.values() if r["event_id"].startswith(("message-id:", "sha256:"))]
    assert [r["status"] for r in poison] == ["DEAD_LETTERED"]


@pytest.mark.parametrize("kind", ["rabbitmq"])
def test_listener_and_nightly_run_at_once_pay_every_payout_once(
    kind: str, dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """The listener and ``batch run`` over the same book at the same time: every payout exactly once."""
    with _world(dsns, kind, tmp_path, latency_ms=30) as world:
        docs = [add_customer(sandbox_store, dsns, divest=Decimal("50.00")) for _ in range(30)]
        listener = world.listener().start()
        try:
            listener.wait_ready()
            nightly = subprocess.Popen(
                batch_command(world.config, "run", "--trigger", "test"),
                env=batch_env(),
                cwd=world.folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            world.publish([withdrawal(d, "50.00") for d in docs])
            out, _ = nightly.communicate(timeout=240)
            assert nightly.returncode in (0, 3), out.decode()[-3000:]
            ids = [d["id"] for d in docs]
            wait_until(lambda: completed(dsns, ids) == len(ids), 120, "every payout")
            wait_until(lambda: len([r for r in inbox(dsns) if r["status"] == "RECEIVED"]) == 0, 60, "the inbox")
        finally:
            listener.stop()
        counts = paid_counts(dsns, {d["id"]: d["external_id"] for d in docs})
        for d in docs:
            assert (counts.journal[d["id"]], counts.ledger[d["id"]]) == (1, 1), d["id"]
            assert (counts.transactions[d["id"]], counts.events[d["id"]]) == (1, 1), d["id"]
        planners = {
            r["trigger"]
            for r in fetch(dsns.journal, "SELECT r.trigger FROM batch.payouts p JOIN batch.runs r ON r.id = p.run_id")
        }
        assert planners <= {"test", "listener"}


@pytest.mark.parametrize(("kind", "size", "listeners"), [("rabbitmq", 100, 2), ("mqtt", 40, 1)])
def test_sigkill_mid_burst_then_restart_handles_every_event_once(
    kind: str, size: int, listeners: int, dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """SIGKILL mid-burst (beside a competing listener on RabbitMQ), restart: every event handled, each paid once."""
    # at 100 ms API latency; the dead run is abandoned and its payouts driven on; SIGTERM then exits 0
    with _world(dsns, kind, tmp_path, latency_ms=100) as world:
        docs = [add_customer(sandbox_store, dsns, divest=None, cash=Decimal("900.00")) for _ in range(size)]
        ids = [d["id"] for d in docs]
        first = world.listener().start()
        first.wait_ready()
        others = [world.listener(free_port()).start() for _ in range(listeners - 1)]
        for other in others:
            other.wait_ready()
        for d in docs:
            world.set_divest(d["id"], "75.50")
        wait_until(lambda: completed(dsns, ids) >= size // 4, 120, "a quarter of the burst")
        first.kill()
        second = world.listener().start()
        try:
            second.wait_ready()
            wait_until(lambda: completed(dsns, ids) == size, 240, "the whole burst")
            wait_until(
                lambda: (
                    len([r for r in inbox(dsns) if r["kind"] == "withdrawal" and r["status"] != "RECEIVED"]) >= 2 * size
                ),
                120,
                "every withdrawal event and its echo",
            )
            assert second.terminate() == 0
            assert all(other.terminate() == 0 for other in others)
        finally:
            second.stop()
            for other in others:
                other.stop()
        counts = paid_counts(dsns, {d["id"]: d["external_id"] for d in docs})
        for d in docs:
            assert (counts.journal[d["id"]], counts.ledger[d["id"]]) == (1, 1), d["id"]
            assert (counts.transactions[d["id"]], counts.events[d["id"]]) == (1, 1), d["id"]
        rows = inbox(dsns)
        # a request redelivered after the kill may find its own echo (divest back to 0) handled: STALE, rightly
        assert all(r["status"] in ("HANDLED", "STALE") for r in rows), [r for r in rows if r["status"] != "HANDLED"][:3]
        assert any(r["attempts"] > 1 for r in rows), "the kill cut no handling off: no event was redelivered"
        runs = fetch(dsns.journal, "SELECT status, trigger FROM batch.runs")
        assert {r["trigger"] for r in runs} == {"listener"}
        assert "ABANDONED" in {r["status"] for r in runs}
        assert "RUNNING" not in {r["status"] for r in runs}
        assert sorted({r["status"] for r in runs}) == ["ABANDONED", "SUCCEEDED"]


def test_sigterm_finishes_in_flight_events_and_leaves_the_rest_to_the_bus(
    dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """SIGTERM mid-burst exits 0 with every started event finished; the rest stay queued for the next listener."""
    with _world(dsns, "rabbitmq", tmp_path, latency_ms=100, concurrency=4) as world:
        docs = [add_customer(sandbox_store, dsns, divest=None) for _ in range(40)]
        ids = [d["id"] for d in docs]
        for d in docs:  # queued on the listener's queue (declared by the sandbox) before the listener starts
            world.set_divest(d["id"], "20.00")
        first = world.listener().start()
        first.wait_ready()
        wait_until(lambda: completed(dsns, ids) >= 5, 120, "the first payouts")
        assert first.terminate() == 0, first.output()
        done = completed(dsns, ids)
        assert done < len(ids), "the burst ended before SIGTERM: nothing was left to the bus"
        states = {r["state"] for r in fetch(dsns.journal, "SELECT state FROM batch.payouts")}
        assert states == {"COMPLETED"}, states
        assert not [r for r in inbox(dsns) if r["status"] == "RECEIVED"]
        runs = fetch(dsns.journal, "SELECT status FROM batch.runs")
        assert {r["status"] for r in runs} == {"SUCCEEDED"}
        second = world.listener().start()
        try:
            second.wait_ready()
            wait_until(lambda: completed(dsns, ids) == len(ids), 120, "the rest of the burst")
        finally:
            second.stop()
        counts = paid_counts(dsns, {d["id"]: d["external_id"] for d in docs})
        assert set(counts.ledger.values()) == {1} and len(counts.ledger) == len(ids)


def test_lowered_amount_before_the_listener_reads_it_pays_the_lower_total(
    dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """Asked 100 then lowered to 60 while the listener is away: the fresh read pays 60, exactly once."""
    with _world(dsns, "rabbitmq", tmp_path) as world:
        doc = add_customer(sandbox_store, dsns, divest=None)
        world.set_divest(doc["id"], "100.00")  # queued: the listener is not running yet
        world.set_divest(doc["id"], "60.00")
        listener = world.listener().start()
        try:
            listener.wait_ready()
            wait_until(lambda: completed(dsns, [doc["id"]]) == 1, 60, "the payout")
            wait_until(lambda: len([r for r in inbox(dsns) if r["status"] != "RECEIVED"]) == 3, 30, "all three events")
        finally:
            listener.stop()
        [payout] = fetch(dsns.journal, "SELECT amount, state FROM batch.payouts WHERE portfolio_id = %s", [doc["id"]])
        assert (payout["amount"], payout["state"]) == (Decimal("60.00"), "COMPLETED")
        assert paid_counts(dsns, {doc["id"]: doc["external_id"]}).ledger[doc["id"]] == 1
        # whichever of the two requests is handled first pays the total asked now (60); the other finds nothing
        # left (or, handled after the newer one, is stale); the job's own PATCH back to 0 asks for nothing
        rows = inbox(dsns)
        paying = [r for r in rows if r["outcome"].startswith("PAY PARTIAL")]
        assert len(paying) == 1 and "60.00" in paying[0]["outcome"]
        others = [r for r in rows if r is not paying[0]]
        assert all(
            r["status"] == "STALE" or r["outcome"].startswith(("SKIP NO_DIVEST_AMOUNT", "divest_amount 0"))
            for r in others
        ), others
