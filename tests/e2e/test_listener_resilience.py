"""``batch listen`` under what wedged it before (issue 24), over real RabbitMQ and real Mosquitto: a flood
of undecodable messages labelled ``application/json``, broker restarts mid-burst, SIGTERM in each state.

Skipped with a one-line reason when a broker does not answer (``.ci/run`` starts them). The broker
restarts need root (``rabbitmqctl``; Mosquitto is stopped by its pid file and started again with its
Debian configuration, whose persistence keeps the listener's session and QoS 1 messages).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from decimal import Decimal
from pathlib import Path

import pytest

from batch.adapters.postgres import Dsns
from tests.e2e.listener_support import (
    ListenerWorld,
    MqttDeadLetters,
    ProbeLog,
    broker_missing,
    completed,
    inbox,
    listener_world,
    metric_value,
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
