"""``batch listen --bus rabbitmq|mqtt|nats``: react to InvestSuite's bus events within seconds.

A long-running consumer, one process per bus (a Kubernetes Deployment beside the nightly CronJob). It
needs no run lock: it works beside a nightly run, the one-open-payout index keeping every payout
single. SIGTERM or SIGINT: no new message is started, those in flight finish, the rest go back to the
bus unacknowledged; the listener's runs are recorded as finished; exit 0.

HTTP (``[bus] health_port``): ``/livez`` (the loop turns), ``/readyz`` (connected to the bus and the
journal, and no delivery waits unacknowledged longer than ``stall_seconds``), ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from batch.adapters.bus import Bus
from batch.adapters.journal.bus import BusStore
from batch.bootstrap import App, build_app
from batch.service.bus.deposits import DepositCheck
from batch.service.bus.events import BusEventHandler
from batch.service.bus.listener import Health, Listener, ListenerMetrics
from batch.service.bus.withdrawal import AbandonedRuns, ListenerRuns, PlanAndExecute
from batch.service.heartbeat import Heartbeat
from batch.service.nightly.run import ExitCode
from batch.settings import BusKind, Settings

log = structlog.get_logger("batch.listen")


def listener_settings(settings: Settings) -> Settings:
    """Connection pools sized for the listener's threads (each may hold a journal and a ledger connection)."""
    threads = max(settings.run.concurrency, settings.bus.concurrency)
    return settings.model_copy(update={"run": settings.run.model_copy(update={"concurrency": threads})})


def serve_health(settings: Settings, health: Health, metrics: ListenerMetrics) -> ThreadingHTTPServer | None:
    """The probes' and Prometheus' endpoint, in a daemon thread (None when ``health_port`` is 0)."""
    if not settings.bus.health_port:
        return None

    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/livez"):
                alive = health.alive()
                self._answer(200 if alive else 503, b"ok\n" if alive else b"stalled\n")
            elif self.path.startswith("/readyz"):
                self._answer(200 if health.ready else 503, b"ready\n" if health.ready else b"not ready\n")
            else:
                self._answer(404, b"not found\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds: not worth a log line

    server = ThreadingHTTPServer((settings.bus.health_host, settings.bus.health_port), Probe)
    threading.Thread(target=server.serve_forever, name="listener-health", daemon=True).start()
    log.info("listener.health_endpoint", host=settings.bus.health_host, port=server.server_address[1])
    return server


def listen(settings: Settings, kind: BusKind | None = None) -> int:
    """Run the listener until SIGTERM/SIGINT; 0 after a graceful stop."""
    settings = listener_settings(settings)
    kind = kind or settings.bus.kind
    app = build_app(settings, migrate_schemas=False)
    try:
        return _listen(app, settings, kind)
    finally:
        app.close()
        if app.dsns.started_server is not None:
            app.dsns.started_server.stop()


def _listen(app: App, settings: Settings, kind: BusKind) -> int:
    instance = uuid.uuid4().hex
    worker = f"listener:{socket.gethostname()}:{os.getpid()}:{instance[:8]}"
    store = BusStore(app.journal_engine, lease_seconds=settings.run.lease_seconds)
    app.client.authenticate()  # refused credentials: exit 2 before anything is consumed
    run = settings.run
    with store.instance_lock(instance, ttl_seconds=run.lease_ttl_seconds) as lease:
        # after a journal restart the heartbeat takes the instance's lock again; a lease found taken
        # (another listener judged this one dead) stops the listener cleanly (exit 1: restart it)
        heartbeat = Heartbeat(
            lease,
            interval=run.heartbeat_seconds,
            warn_after=run.journal_stall_warn_seconds,
            lost_after=run.journal_stall_abort_seconds,  # a listener waits for its journal; it does not self-fence
            abort_after=run.journal_stall_abort_seconds + run.lease_ttl_seconds,
        ).start()
        stopping = threading.Event()
        runs = ListenerRuns(app, bus=kind, instance=instance, worker=worker)
        abandoned = AbandonedRuns(app, store, runs)
        abandoned.sweep()  # before consuming: what a dead listener left is released and driven on first
        handler = BusEventHandler(
            store=store,
            journal=app.journal,
            bus=kind,
            # a batch of at most half the handler threads: a batch holds its events' threads until its
            # payouts end, so the next burst's deliveries still find threads to gather in
            withdrawals=PlanAndExecute(app, store, runs, max_batch=max(1, min(100, settings.bus.concurrency // 2))),
            deposits=DepositCheck(app, runs),
            current_run=lambda: runs.current,
            worker=worker,
            lease_seconds=settings.run.lease_seconds,
            max_attempts=settings.bus.max_handling_attempts,
            stopping=stopping,
            max_body_bytes=settings.bus.max_body_bytes,
        )
        metrics = ListenerMetrics(kind)
        listener = Listener(
            bus=Bus(settings.bus, kind),
            handle=handler.handle,
            metrics=metrics,
            journal_ok=store.ping,
            concurrency=settings.bus.concurrency,
            stopping=stopping,
            health=Health(stall_seconds=settings.bus.stall_seconds, liveness_seconds=settings.bus.liveness_seconds),
            housekeeping=abandoned.sweep,
            stop_grace=settings.bus.stop_grace_seconds,
        )
        server = serve_health(settings, listener.health, metrics)
        try:
            asyncio.run(_until_signalled(listener, heartbeat.lost))
        finally:
            heartbeat.stop()
            if server is not None:
                server.shutdown()
            runs.close()
        if heartbeat.lost.is_set():
            log.error("listener.lease_lost", reason=heartbeat.lost_reason)
            return ExitCode.TECHNICAL_FAILURE
    return ExitCode.OK


async def _until_signalled(listener: Listener, lost: threading.Event) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop_on, stop, signum)

    async def watch_lease() -> None:
        while not stop.is_set():
            if lost.is_set():
                stop.set()
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch_lease())
    try:
        await listener.run(stop)
    finally:
        watcher.cancel()


def _stop_on(stop: asyncio.Event, signum: int) -> None:
    log.warning("listener.stop_requested", signal=signal.Signals(signum).name)
    stop.set()
