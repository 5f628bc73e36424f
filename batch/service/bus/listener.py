"""The listener's consumer loop: bounded, acknowledging only what the journal has committed.

The bus hands messages over (at most ``prefetch`` unacknowledged on RabbitMQ); at most ``concurrency``
are handled at once, each in a worker thread (``BusEventHandler.handle``: the journal, the planner and
the executor are synchronous). After the handling the message is acknowledged — or dead-lettered then
acknowledged. A journal that cannot be written makes the handling wait and try again: nothing is
acknowledged that is not recorded.

Stopping (SIGTERM): no new message is started; messages already being handled get ``stop_grace``
seconds to finish; those handed over but not started are left unacknowledged and go back to the bus
when the connection closes. Nothing waits on the bus while stopping: a connection attempt or a back-off
is cut short, closing the connection is bounded, so SIGTERM ends within seconds whether the listener is
idle, busy or the bus is down (issue 24).

Health tells the truth (issue 24): every delivery is tracked from hand-over to acknowledgement;
readiness fails while the oldest unacknowledged one is older than ``stall_seconds`` (messages wait and
the consumer makes no progress), as well as when the bus or the journal does not answer; liveness
fails when the event loop has not turned for ``liveness_seconds``. ``/metrics`` shows the oldest
unacknowledged age, the unacknowledged count and the dead-letter count.

An acknowledgement that fails (the channel it came on died with a broker restart) is not retried: the
broker hands the message over again and the inbox answers "duplicate" once it was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batch.adapters.bus import Delivery, OnMessage
from batch.service.bus.events import Handled, Verdict

log = structlog.get_logger("batch.listener")

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class HandleMessage(Protocol):
    """``BusEventHandler.handle``: decode, record and handle one message body."""

    def __call__(self, body: bytes, *, routing_key: str | None = None, message_id: str | None = None) -> Handled: ...


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
        self.ready = Gauge(
            "batch_bus_ready", "1 when connected to the bus and the journal and making progress", b, registry=r
        )
        self.unacked = Gauge("batch_bus_unacked", "Deliveries handed over and not yet acknowledged", b, registry=r)
        self.oldest_unacked = Gauge(
            "batch_bus_oldest_unacked_age_seconds", "Age of the oldest unacknowledged delivery (0: none)", b, registry=r
        )

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
    """Readiness (bus and journal reachable, progress made) and liveness (the loop turns), for the probes.

    Read from the probe's HTTP thread: ``oldest_unacked`` must be safe to call from there.
    """

    #: the bus and the journal answered at the last check
    connected: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    stall_seconds: float = 120.0
    liveness_seconds: float = 30.0
    oldest_unacked: Callable[[], float] = lambda: 0.0

    @property
    def stalled(self) -> bool:
        """Messages wait and none has been acknowledged for ``stall_seconds``."""
        return self.oldest_unacked() > self.stall_seconds

    @property
    def ready(self) -> bool:
        return self.connected and not self.stalled

    def alive(self) -> bool:
        return time.monotonic() - self.heartbeat < self.liveness_seconds


@dataclass
class Listener:
    bus: BusPort
    handle: HandleMessage
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
    #: on stop, how long the events being handled may take to finish
    stop_grace: float = 3.0

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="bus-event")
        self._slots = asyncio.Semaphore(self.concurrency)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: delivery number -> when it was handed over (monotonic), until it is acknowledged or given back
        self._unacked: dict[int, float] = {}
        self._numbers = itertools.count()
        self.health.oldest_unacked = self.oldest_unacked_age
        self.metrics.oldest_unacked.labels(self.bus.kind).set_function(self.oldest_unacked_age)
        self.metrics.unacked.labels(self.bus.kind).set_function(lambda: len(self._unacked))
        self.metrics.ready.labels(self.bus.kind).set_function(lambda: 1 if self.health.ready else 0)

    def oldest_unacked_age(self) -> float:
        """Seconds since the oldest delivery not yet acknowledged was handed over (0 when none waits)."""
        times = list(self._unacked.values())  # a copy: the probe's thread reads while the loop writes
        return max(0.0, time.monotonic() - min(times)) if times else 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain what is in flight (bounded) and close the connection."""
        self.bus.consume(self._on_message)
        beat = asyncio.create_task(self._beat(stop))
        connected = await self._connect(stop)
        health = asyncio.create_task(self._watch_health(stop))
        chores = asyncio.create_task(self._housekeep(stop))
        if connected:
            log.info("listener.started", bus=self.bus.kind, concurrency=self.concurrency)
        try:
            await stop.wait()
        finally:
            self.stopping.set()
            log.info("listener.stopping", in_flight=self._in_flight)
            try:
                await asyncio.wait_for(self._idle.wait(), self.stop_grace)
            except TimeoutError:
                log.warning("listener.stop_grace_over", in_flight=self._in_flight)
            for task in (health, beat):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(chores), 1.0)
            self.health.connected = False
            try:  # a bus that is down must not hold the exit up: what was not acknowledged is redelivered anyway
                await asyncio.wait_for(self.bus.stop(), 2.0)
            except Exception as exc:
                log.warning("listener.close_failed", error=f"{type(exc).__name__}: {exc}"[:500])
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.info("listener.stopped")

    async def _connect(self, stop: asyncio.Event) -> bool:
        """Connect, retrying with back-off; False when ``stop`` came first (a connection attempt is cut short)."""
        delay = 1.0
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                attempt = asyncio.create_task(self.bus.start())
                await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not attempt.done():
                    attempt.cancel()
                    with contextlib.suppress(BaseException):
                        await attempt
                    return False
                if attempt.exception() is None:
                    return True
                exc = attempt.exception()
                log.warning("listener.connect_failed", bus=self.bus.kind, error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopped), delay)
                delay = min(delay * 2, 30.0)
            return False
        finally:
            stopped.cancel()

    async def _beat(self, stop: asyncio.Event) -> None:
        """The liveness heartbeat: it stops when the event loop is blocked."""
        while not stop.is_set():
            self.health.heartbeat = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _watch_health(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            bus_ok = await self.bus.ping()
            journal_ok = await loop.run_in_executor(None, self.journal_ok)
            self.health.connected = bus_ok and journal_ok
            if self.health.stalled:
                log.warning("listener.stalled", oldest_unacked_seconds=round(self.oldest_unacked_age(), 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.health_interval)

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
        number = next(self._numbers)
        self._unacked[number] = time.monotonic()
        try:
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
        finally:
            self._unacked.pop(number, None)

    async def _settle(self, delivery: Delivery) -> None:
        handled = await self._record(delivery)
        if handled is None or handled.verdict is Verdict.RETRY:
            return  # stopping: left to the bus
        if handled.verdict is Verdict.DEAD_LETTER and not await self._dead_letter(delivery, handled.outcome):
            return
        try:
            await delivery.ack()
        except Exception as exc:  # its channel is gone (a broker restart): redelivered, then a duplicate in the inbox
            log.warning("listener.ack_failed", error=f"{type(exc).__name__}: {exc}"[:500])
        self.metrics.observe(handled)

    async def _record(self, delivery: Delivery) -> Handled | None:
        """Handle the message until the journal has recorded it (None: stopped before it could)."""
        loop = asyncio.get_running_loop()
        work = functools.partial(
            self.handle, delivery.body, routing_key=delivery.routing_key, message_id=delivery.message_id
        )
        while True:
            try:
                return await loop.run_in_executor(self._pool, work)
            except Exception as exc:  # the journal could not record it: nothing is acknowledged
                log.warning("listener.not_recorded", error=f"{type(exc).__name__}: {exc}"[:500])
                if self.stopping.is_set():
                    return None
                await asyncio.sleep(self.retry_seconds)

    async def _dead_letter(self, delivery: Delivery, reason: str) -> bool:
        """Publish to the dead-letter target until the bus takes it (False: stopped first, left to the bus)."""
        while True:
            try:
                await self.bus.dead_letter(delivery.body, reason)
                return True
            except Exception as exc:
                log.warning("listener.dead_letter_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                if self.stopping.is_set():
                    return False
                await asyncio.sleep(self.retry_seconds)
