"""The listener's consumer loop with an in-memory bus (issue 24): health is progress, not a live process;
SIGTERM ends within seconds whether idle, busy or with the bus down; a failed acknowledgement is not
retried (the broker redelivers and the inbox answers "duplicate")."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from batch.service.bus.events import Handled, Verdict
from batch.service.bus.listener import Health, Listener, ListenerMetrics
from tests.fakes import FakeBus


class Handler:
    """Handles every body as an ACK; a body in ``block`` waits until ``release`` is set."""

    def __init__(self, block: frozenset[bytes] = frozenset()) -> None:
        self.block, self.release = block, threading.Event()
        self.seen: list[tuple[bytes, str | None]] = []

    def __call__(self, body: bytes, *, routing_key: str | None = None, message_id: str | None = None) -> Handled:
        self.seen.append((body, routing_key))
        if body in self.block:
            self.release.wait(10)
        return Handled(Verdict.ACK, "HANDLED", "ok", "withdrawal")


def listener(bus: FakeBus, handle: Handler, **kw: Any) -> Listener:
    health = Health(stall_seconds=kw.pop("stall_seconds", 120.0), liveness_seconds=kw.pop("liveness_seconds", 30.0))
    return Listener(
        bus=bus,
        handle=handle,
        metrics=ListenerMetrics("rabbitmq"),
        journal_ok=lambda: True,
        concurrency=4,
        health=health,
        health_interval=0.05,
        **kw,
    )


async def run_until(loop_listener: Listener, scenario: Callable[[asyncio.Event], Awaitable[None]]) -> float:
    """Run the listener, play ``scenario`` (which sets stop), return the seconds from stop to the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(loop_listener.run(stop))
    await scenario(stop)
    stopped_at = time.monotonic()
    await asyncio.wait_for(task, 10)
    return time.monotonic() - stopped_at


def test_readiness_fails_while_a_delivery_waits_unacknowledged_past_the_bound() -> None:
    """A delivery stuck past stall_seconds: not ready (age in the metric); acknowledged: ready again."""
    bus, handle = FakeBus(), Handler(block=frozenset({b"stuck"}))
    loop_listener = listener(bus, handle, stall_seconds=0.3)
    seen: dict[str, Any] = {}

    async def scenario(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.2)
        assert loop_listener.health.ready and bus.on_message is not None
        task = asyncio.create_task(bus.on_message(bus.delivery(b"stuck")))
        await asyncio.sleep(0.6)
        seen["ready_while_stuck"] = loop_listener.health.ready
        seen["alive_while_stuck"] = loop_listener.health.alive()
        seen["age"] = loop_listener.oldest_unacked_age()
        gauge = loop_listener.metrics.registry.get_sample_value
        seen["metric"] = gauge("batch_bus_oldest_unacked_age_seconds", {"bus": "rabbitmq"})
        seen["ready_metric"] = gauge("batch_bus_ready", {"bus": "rabbitmq"})
        handle.release.set()
        await task
        seen["ready_after"] = loop_listener.health.ready
        seen["age_after"] = loop_listener.oldest_unacked_age()
        stop.set()

    asyncio.run(run_until(loop_listener, scenario))
    assert (seen["ready_while_stuck"], seen["alive_while_stuck"], seen["ready_metric"]) == (False, True, 0)
    assert seen["age"] > 0.3 and seen["metric"] > 0.3
    assert (seen["ready_after"], seen["age_after"], bus.acked) == (True, 0.0, [b"stuck"])


def test_liveness_fails_when_the_event_loop_is_blocked() -> None:
    """A blocked event loop stops the heartbeat: /livez would answer stalled while it lasts."""
    loop_listener = listener(FakeBus(), Handler(), liveness_seconds=0.3)
    samples: list[bool] = []

    async def scenario(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.2)

        def sample() -> None:
            for _ in range(14):
                samples.append(loop_listener.health.alive())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(0.7)  # blocks the loop on purpose
        await asyncio.sleep(0.1)
        sampler.join()
        stop.set()

    asyncio.run(run_until(loop_listener, scenario))
    assert samples[0] and not all(samples)


@pytest.mark.parametrize("bus", [FakeBus(start_fails=True), FakeBus(start_hangs=True)], ids=["refused", "hanging"])
def test_sigterm_while_the_bus_is_down_ends_at_once(bus: FakeBus) -> None:
    """The bus refuses connections (back-off running) or a connection attempt hangs: stop ends within 1 s."""
    loop_listener = listener(bus, Handler())

    async def scenario(stop: asyncio.Event) -> None:
        await asyncio.sleep(1.5)
        assert not loop_listener.health.ready
        stop.set()

    assert asyncio.run(run_until(loop_listener, scenario)) < 1.0
    assert bus.starts >= 1 and bus.stopped


def test_sigterm_while_busy_waits_only_the_grace() -> None:
    """A handling that does not finish holds the stop up for stop_grace, no longer; nothing is acknowledged."""
    bus, handle = FakeBus(), Handler(block=frozenset({b"slow"}))
    loop_listener = listener(bus, handle, stop_grace=0.5)

    async def scenario(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.1)
        assert bus.on_message is not None
        asyncio.get_running_loop().create_task(bus.on_message(bus.delivery(b"slow")))
        await asyncio.sleep(0.1)
        stop.set()

    took = asyncio.run(run_until(loop_listener, scenario))
    handle.release.set()
    assert 0.4 < took < 2.0 and bus.acked == []


def test_failed_acknowledgement_is_not_retried() -> None:
    """The channel died (broker restart): the ack fails once, the message is left to the redelivery."""
    bus, handle = FakeBus(ack_fails=True), Handler()
    loop_listener = listener(bus, handle)

    async def scenario(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.1)
        assert bus.on_message is not None
        await asyncio.wait_for(bus.on_message(bus.delivery(b"event")), 2)
        stop.set()

    asyncio.run(run_until(loop_listener, scenario))
    assert handle.seen == [(b"event", "portfolios.test")]
    assert loop_listener.oldest_unacked_age() == 0.0
