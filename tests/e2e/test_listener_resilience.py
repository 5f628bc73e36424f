"""``batch listen`` under what wedged it before (issue 24), over real RabbitMQ and real Mosquitto: a flood
of undecodable messages labelled ``application/json``, broker restarts mid-burst, SIGTERM in each state.

Skipped with a one-line reason when a broker does not answer (``.ci/run`` starts them). The broker
restarts need root (``rabbitmqctl``; Mosquitto is stopped by its pid file and started again with its
Debian configuration, whose persistence keeps the listener's session and QoS 1 messages).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from decimal import Decimal
from pathlib import Path

import pytest

from batch.adapters.postgres import Dsns
from batch.sandbox.bus_events import SHAPES_ENV
from batch.sandbox.server import free_port
from tests.e2e.helpers import fetch
from tests.e2e.listener_support import (
    ListenerProcess,
    ListenerWorld,
    MqttDeadLetters,
    ProbeLog,
    broker_missing,
    completed,
    inbox,
    listener_world,
    metric_value,
    paid_counts,
    read_dead_letters,
    wait_until,
)
from tests.fixtures.sandbox import SandboxState
from tests.integration.bus_support import withdrawal
from tests.integration.payout_support import add_customer

pytestmark = pytest.mark.slow
STALL_SECONDS = 5


@contextmanager
def _world(dsns: Dsns, kind: str, tmp_path: Path, **kw: int) -> Iterator[ListenerWorld]:
    reason = broker_missing(kind)
    if reason:
        pytest.skip(reason)
    with listener_world(dsns, kind, tmp_path / kind, **kw) as world:
        yield world


@pytest.mark.parametrize("kind", ["rabbitmq", "mqtt"])
def test_hundred_undecodable_json_messages_then_a_withdrawal_is_paid_within_ten_seconds(
    kind: str, dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """100 truncated bodies labelled application/json (the MQTT 5 property on Mosquitto), then a withdrawal:
    paid within 10 s, all 100 dead-lettered with reasons and in the inbox, readiness never lied."""
    with _world(dsns, kind, tmp_path) as world:
        doc = add_customer(sandbox_store, dsns, divest=Decimal("40.00"), cash=Decimal("500.00"))
        listener = world.listener(env={"BATCH_BUS__STALL_SECONDS": str(STALL_SECONDS)}).start()
        dead: AbstractContextManager[MqttDeadLetters | None] = (
            MqttDeadLetters(world.names) if kind == "mqtt" else nullcontext()
        )
        try:
            listener.wait_ready()
            with dead as mqtt_dead, ProbeLog(listener) as probes:
                bad = [b'{"id": "bad-%d", "created": "2026-12-0' % i for i in range(100)]
                world.publish(bad, content_type="application/json")
                world.publish([withdrawal(doc, "40.00", event_id="w-after-poison")], content_type="application/json")
                wait_until(lambda: completed(dsns, [doc["id"]]) == 1, 10, "the withdrawal behind 100 poison messages")
                letters = mqtt_dead.wait_for(100) if mqtt_dead is not None else read_dead_letters(world.names, 100)
                time.sleep(1.0)  # a few more probe samples once everything is acknowledged
            metrics = listener.metrics()
        finally:
            listener.stop()
        assert sorted(body for body, _ in letters) == sorted(bad)
        assert all(reason.startswith("invalid JSON") for _, reason in letters), letters[:3]
        rows = [r for r in inbox(dsns) if r["status"] == "DEAD_LETTERED"]
        assert len(rows) == 100 and all(r["outcome"].startswith("invalid JSON") for r in rows)
        assert metric_value(metrics, "batch_bus_events_dead_lettered_total") == 100
        assert metric_value(metrics, "batch_bus_oldest_unacked_age_seconds") == 0
        lies = [(status, age) for status, age in probes.samples if status == 200 and age > STALL_SECONDS]
        assert probes.samples and not lies, lies
        assert any(status == 200 for status, _ in probes.samples)


def _sigterm_takes(listener: ListenerProcess) -> tuple[int, float]:
    assert listener.process is not None
    started = time.monotonic()
    listener.process.send_signal(signal.SIGTERM)
    code = listener.process.wait(timeout=60)
    return code, time.monotonic() - started


def test_sigterm_exits_zero_within_five_seconds_idle_busy_and_with_the_bus_down(
    dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """SIGTERM: exit 0 within 5 s when idle, mid-burst (100 ms API latency) and while the bus is unreachable."""
    with _world(dsns, "rabbitmq", tmp_path, latency_ms=100, concurrency=4) as world:
        idle = world.listener().start()
        idle.wait_ready()
        code, took = _sigterm_takes(idle)
        assert (code, took < 5) == (0, True), (took, idle.output())

        docs = [add_customer(sandbox_store, dsns, divest=None) for _ in range(30)]
        ids = [d["id"] for d in docs]
        busy = world.listener().start()
        busy.wait_ready()
        for d in docs:
            world.set_divest(d["id"], "20.00")
        wait_until(lambda: completed(dsns, ids) >= 3, 120, "the first payouts")
        code, took = _sigterm_takes(busy)
        assert (code, took < 5) == (0, True), (took, busy.output())
        assert {r["state"] for r in fetch(dsns.journal, "SELECT state FROM batch.payouts")} == {"COMPLETED"}

        down = world.listener(env={"BATCH_BUS__RABBITMQ_URL": f"amqp://127.0.0.1:{free_port()}/"}).start()
        wait_until(lambda: "listener.connect_failed" in down.output(), 60, "a failed connection")
        time.sleep(3)  # inside the reconnect back-off
        code, took = _sigterm_takes(down)
        assert (code, took < 5) == (0, True), (took, down.output())
        assert down.probe("/readyz") == 0  # gone


def _restart_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
    time.sleep(2)
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)


def _restart_mosquitto() -> None:
    pid = int(Path("/run/mosquitto/mosquitto.pid").read_text(encoding="utf-8").strip())
    os.kill(pid, signal.SIGTERM)  # mosquitto writes its persistence file (sessions, QoS 1 messages) on exit
    wait_until(lambda: broker_missing("mqtt") is not None, 30, "mosquitto to stop")
    time.sleep(1)
    subprocess.run(["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"], check=True, timeout=30)
    wait_until(lambda: broker_missing("mqtt") is None, 30, "mosquitto to start")


def _can_restart(kind: str) -> str | None:
    if os.geteuid() != 0:
        return "restarting the broker needs root"
    if kind == "rabbitmq" and shutil.which("rabbitmqctl") is None:
        return "no rabbitmqctl"
    if kind == "mqtt" and not (shutil.which("mosquitto") and Path("/run/mosquitto/mosquitto.pid").exists()):
        return "no mosquitto started from /etc/mosquitto/mosquitto.conf"
    return None


@pytest.mark.parametrize("kind", ["rabbitmq", "mqtt"])
def test_broker_restarted_mid_burst_every_event_handled_once(
    kind: str, dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path
) -> None:
    """The broker is restarted mid-burst: the listener carries on; every event handled once, every payout once."""
    reason = _can_restart(kind)
    if reason:
        pytest.skip(reason)
    size = 40
    with _world(dsns, kind, tmp_path, latency_ms=50) as world:
        docs = [add_customer(sandbox_store, dsns, divest=Decimal("30.00"), cash=Decimal("900.00")) for _ in range(size)]
        ids = [d["id"] for d in docs]
        listener = world.listener().start()
        try:
            listener.wait_ready()
            world.publish([withdrawal(d, "30.00", event_id=f"w-{i}") for i, d in enumerate(docs)])
            wait_until(lambda: completed(dsns, ids) >= 5, 120, "the first payouts")
            (_restart_rabbitmq if kind == "rabbitmq" else _restart_mosquitto)()
            wait_until(lambda: completed(dsns, ids) == size, 180, "the whole burst after the restart")
            # each request, and the echo of the job's own PATCH (divest back to 0) the sandbox publishes
            wait_until(
                lambda: len([r for r in inbox(dsns) if r["status"] == "HANDLED"]) == 2 * size, 60, "every event handled"
            )
            listener.wait_ready(30)
            assert _sigterm_takes(listener)[0] == 0
        finally:
            listener.stop()
            if broker_missing(kind):  # never leave the machine without its broker
                (_restart_rabbitmq if kind == "rabbitmq" else _restart_mosquitto)()
        rows = inbox(dsns)
        requests = sorted(r["event_id"] for r in rows if r["event_id"].startswith("w-"))
        assert requests == sorted(f"w-{i}" for i in range(size)) and len(rows) == 2 * size
        assert {r["status"] for r in rows} == {"HANDLED"}
        counts = paid_counts(dsns, {d["id"]: d["external_id"] for d in docs})
        for d in docs:
            assert (counts.journal[d["id"]], counts.ledger[d["id"]]) == (1, 1), d["id"]
            assert (counts.transactions[d["id"]], counts.events[d["id"]]) == (1, 1), d["id"]


@pytest.mark.parametrize("kind", ["rabbitmq", "mqtt"])
def test_the_events_pages_own_shapes_from_the_sandbox_are_handled(
    kind: str, dsns: Dsns, sandbox_store: SandboxState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox publishing the page's shapes (placeholder ``created``, bare ``{"id"}`` removal on
    ``portfolio.removal``): the withdrawal is paid once, the removal handled as a removal, nothing dead-lettered."""
    monkeypatch.setenv(SHAPES_ENV, "page")
    with _world(dsns, kind, tmp_path) as world:
        doc = add_customer(sandbox_store, dsns, divest=None, cash=Decimal("800.00"))
        gone = add_customer(sandbox_store, dsns, divest=None)
        listener = world.listener().start()
        try:
            listener.wait_ready()
            world.set_divest(doc["id"], "300.00")
            wait_until(lambda: completed(dsns, [doc["id"]]) == 1, 60, "the payout")
            response = world.http.delete(f"{world.sandbox.base_url}/_sandbox/portfolios/{gone['id']}", timeout=30)
            response.raise_for_status()
            wait_until(lambda: any(r["kind"] == "removal" for r in inbox(dsns)), 30, "the bare removal")
            wait_until(lambda: not [r for r in inbox(dsns) if r["status"] == "RECEIVED"], 30, "every event finished")
        finally:
            listener.stop()
        rows = inbox(dsns)
        assert {r["status"] for r in rows} == {"HANDLED"}, [(r["kind"], r["status"], r["outcome"]) for r in rows]
        [removal] = [r for r in rows if r["kind"] == "removal"]
        assert removal["portfolio_id"] == gone["id"] and removal["event_id"].startswith("sha256:")
        assert removal["created"] is None and "no open payout" in removal["outcome"]
        assert all(r["created"] is None for r in rows)  # every envelope carried the placeholder time
        counts = paid_counts(dsns, {doc["id"]: doc["external_id"]})
        assert (counts.journal[doc["id"]], counts.ledger[doc["id"]], counts.events[doc["id"]]) == (1, 1, 1)
