"""The listener's consumer loop: bounded, acknowledging only what the journal has committed.

The bus hands messages over (at most ``prefetch`` unacknowledged on RabbitMQ); at most ``concurrency``
are handled at once, each in a worker thread (``BusEventHandler.handle``: the journal, the planner and
the executor are synchronous). After the handling the message is acknowledged — or dead-lettered then
acknowledged. A journal that cannot be written makes the handling wait and try again: nothing is
acknowledged that is not recorded.

Stopping (SIGTERM): no new message is started; messages already being handled finish; those handed
over but not started are left unacknowledged and go back to the bus when the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batch.adapters.bus import Delivery, OnMessage
from batch.service.bus_events import Handled, Verdict

log = structlog.get_logger("batch.listener")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class BusPort(Protocol):
    """What the loop needs of a bus (``batch.adapters.bus.Bus``)."""

    @property
    def kind(self) -> str: ...

    def consume(self, on_message: OnMessage) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ping(self, timeout: float = 2.0) -> bool: ...

    async def dead_letter(self, body: bytes, reason: str) -> None: ...


@dataclass
class ListenerMetrics:
    """Prometheus metrics of one listener process (served on ``/metrics`` by ``batch listen``)."""

    bus: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r, b = self.registry, ["bus"]
        self.consumed = Counter("batch_bus_events_consumed", "Messages handed over by the bus", b, registry=r)
        self.duplicates = Counter("batch_bus_events_duplicate", "Deliveries of an event already handled", b, registry=r)
        self.stale = Counter("batch_bus_events_stale", "Events older than the last one handled", b, registry=r)
        self.dead_lettered = Counter("batch_bus_events_dead_lettered", "Poison or failed messages", b, registry=r)
        self.handled = Counter(
            "batch_bus_events_handled", "Events by final status and kind", ["bus", "status", "kind"], registry=r
        )
        self.latency = Histogram(
            "batch_bus_event_to_completed_seconds",
            "From the event's creation to the end of its handling",
            b,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("batch_bus_events_in_flight", "Events being handled", b, registry=r)
        self.ready = Gauge("batch_bus_ready", "1 when connected to the bus and the journal", b, registry=r)

    def observe(self, handled: Handled) -> None:
        self.handled.labels(self.bus, handled.status, handled.kind or "").inc()
        if handled.status == "DUPLICATE":
            self.duplicates.labels(self.bus).inc()
        elif handled.status == "STALE":
            self.stale.labels(self.bus).inc()
        if handled.verdict is Verdict.DEAD_LETTER:
            self.dead_lettered.labels(self.bus).inc()
        if handled.latency is not None:
            self.latency.labels(self.bus).observe(max(handled.latency, 0.0))


@dataclass
class Health:
    """Readiness (bus and journal reachable) and liveness (the loop turns), read by the HTTP endpoint."""

    ready: bool = False
    heartbeat: float = field(default_factory=time.monotonic)

    def alive(self, within: float = 30.0) -> bool:
        return time.monotonic() - self.heartbeat < within


@dataclass
class Listener:
    bus: BusPort
    handle: Callable[[bytes], Handled]
    metrics: ListenerMetrics
    journal_ok: Callable[[], bool]
    concurrency: int
    stopping: threading.Event = field(default_factory=threading.Event)
    health: Health = field(default_factory=Health)
    #: periodic work besides the messages (the dead listeners' payouts), run in a thread
    housekeeping: Callable[[], object] | None = None
    housekeeping_interval: float = 10.0
    retry_seconds: float = 2.0
    health_interval: float = 2.0

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bus-event")
        self._slots = asyncio.Semaphore(self.concurrency)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain what is in flight and close the connection."""
        self.bus.consume(self._on_message)
        await self._connect(stop)
        health = asyncio.create_task(self._watch_health(stop))
        chores = asyncio.create_task(self._housekeep(stop))
        log.info("listener.started", bus=self.bus.kind, concurrency=self.concurrency)
        try:
            await stop.wait()
        finally:
            self.stopping.set()
            log.info("listener.stopping", in_flight=self._in_flight)
            await self._idle.wait()
            health.cancel()
            await chores
            self.health.ready = False
            await self.bus.stop()
            self._pool.shutdown(wait=True)
            log.info("listener.stopped")

    async def _connect(self, stop: asyncio.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            try:
                await self.bus.start()
                return
            except Exception as exc:  # the bus is not there yet: keep trying (not ready meanwhile)
                log.warning("listener.connect_failed", bus=self.bus.kind, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _watch_health(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            bus_ok = await self.bus.ping()
            journal_ok = await loop.run_in_executor(None, self.journal_ok)
            self.health.ready = bus_ok and journal_ok
            self.health.heartbeat = time.monotonic()
            self.metrics.ready.labels(self.bus.kind).set(1 if self.health.ready else 0)
            await asyncio.sleep(self.health_interval)

    async def _housekeep(self, stop: asyncio.Event) -> None:
        if self.housekeeping is None:
            return
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await loop.run_in_executor(None, self.housekeeping)
            except Exception as exc:  # the next round tries again
                log.warning("listener.housekeeping_failed", error=f"{type(exc).__name__}: {exc}"[:500])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.housekeeping_interval)

    async def _on_message(self, delivery: Delivery) -> None:
        if self.stopping.is_set():
            return  # left unacknowledged: the bus hands it over again after the connection closes
        async with self._slots:
            if self.stopping.is_set():
                return
            self._in_flight += 1
            self._idle.clear()
            self.metrics.in_flight.labels(self.bus.kind).inc()
            try:
                self.metrics.consumed.labels(self.bus.kind).inc()
                await self._settle(delivery)
            finally:
                self._in_flight -= 1
                self.metrics.in_flight.labels(self.bus.kind).dec()
                if not self._in_flight:
                    self._idle.set()

    async def _settle(self, delivery: Delivery) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                handled = await loop.run_in_executor(self._pool, self.handle, delivery.body)
                if handled.verdict is Verdict.DEAD_LETTER:
                    await self.bus.dead_letter(delivery.body, handled.outcome)
                if handled.verdict is not Verdict.RETRY:
                    await delivery.ack()
                self.metrics.observe(handled)
                return
            except Exception as exc:  # the journal or the bus could not record it: nothing is acknowledged
                log.warning("listener.not_recorded", error=f"{type(exc).__name__}: {exc}"[:500])
                if self.stopping.is_set():
                    return
                await asyncio.sleep(self.retry_seconds)
