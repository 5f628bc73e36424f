"""The bus listener end to end: real RabbitMQ / Mosquitto on 127.0.0.1, the sandbox publishing to them,
``batch listen`` as a subprocess, and readers that check the outcome straight from the databases.

Each test gets its own exchange, queue, topic, dead-letter target and client id, so tests (and xdist
workers) share a broker without seeing each other's messages. Used by tests/e2e/test_listener.py and
bench/listener_bench.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from batch.adapters.bus import DEAD_LETTER_REASON, Bus
from batch.adapters.postgres import Dsns
from batch.sandbox.server import SandboxProcess, free_port
from batch.settings import BusSettings
from tests.e2e.chaos_support import batch_command, batch_env, write_config
from tests.e2e.helpers import fetch

BROKERS = {"rabbitmq": ("127.0.0.1", 5672), "mqtt": ("127.0.0.1", 1883), "nats": ("127.0.0.1", 4222)}


def broker_missing(kind: str) -> str | None:
    """Why the broker of ``kind`` cannot be used here (None when it answers on its TCP port)."""
    host, port = BROKERS[kind]
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError:
        return f"{kind} is not reachable on {host}:{port} (.ci/run starts it)"


@dataclass(frozen=True)
class BusNames:
    """A bus of its own for one test: unique names on a shared broker."""

    kind: str
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def options(self) -> dict[str, Any]:
        s = self.suffix
        return {
            "kind": self.kind,
            "exchange": f"t-{s}.events",
            "queue": f"t-{s}.listener",
            "topic": f"t-{s}.events",
            "stream": f"T{s.upper()}",
            "dead_letter": f"t-{s}.dead-letter",
            "client_id": f"t-{s}",
        }

    def settings(self) -> BusSettings:
        return BusSettings.model_validate(self.options())

    def toml(self, health_port: int, *, concurrency: int = 16) -> str:
        lines = ["[bus]", *(f"{k} = {json.dumps(v)}" for k, v in self.options().items())]
        return "\n".join([*lines, f"health_port = {health_port}", f"concurrency = {concurrency}", ""])


@dataclass
class ListenerProcess:
    """``batch listen`` in a child process."""

    config: Path
    kind: str
    health_port: int
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    #: extra environment (``BATCH_BUS__STALL_SECONDS`` ...)
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> ListenerProcess:
        self.log = self.cwd / f"listener-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                batch_command(self.config, "listen", "--bus", self.kind),
                env=batch_env()
                | {"BATCH_LOG_LEVEL": "INFO", "BATCH_BUS__HEALTH_PORT": str(self.health_port)}
                | self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def probe(self, path: str) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}{path}", timeout=2.0).status_code
        except httpx.HTTPError:
            return 0

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the listener exited with {self.process.returncode}:\n{self.output()}")
            if self.probe("/readyz") == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"the listener was not ready within {timeout} s:\n{self.output()}")

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5.0).text

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 120.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-6000:] if self.log else ""


@dataclass
class ListenerWorld:
    dsns: Dsns
    names: BusNames
    sandbox: SandboxProcess
    config: Path
    folder: Path
    health_port: int
    http: httpx.Client

    def listener(self, health_port: int | None = None, env: dict[str, str] | None = None) -> ListenerProcess:
        """A listener process (another ``health_port`` to run several beside each other)."""
        return ListenerProcess(
            self.config, self.names.kind, health_port or self.health_port, self.folder, env=dict(env or {})
        )

    def set_divest(self, portfolio_id: str, amount: Any) -> None:
        """As the app does: the customer asks for cash (the sandbox publishes the withdrawal event)."""
        response = self.http.put(
            f"{self.sandbox.base_url}/_sandbox/portfolios/{portfolio_id}/divest",
            content=json.dumps({"divest_amount": "AMOUNT"}).replace('"AMOUNT"', str(amount)),
            timeout=30.0,
        )
        response.raise_for_status()

    def publish(self, bodies: list[bytes], *, content_type: str | None = None, routing_key: str = "") -> None:
        """Publish raw messages on the event topic (what InvestSuite would send), labelled ``content_type``."""
        if content_type and self.names.kind == "mqtt":
            asyncio.run(_publish_mqtt5(self.names.settings(), bodies, content_type))
        else:
            asyncio.run(_publish(self.names.settings(), bodies, content_type, routing_key or "portfolios.test"))


@contextmanager
def listener_world(
    dsns: Dsns, kind: str, folder: Path, *, latency_ms: int = 0, concurrency: int = 16
) -> Iterator[ListenerWorld]:
    """The sandbox publishing to a bus of its own, and the listener's config (not started)."""
    names = BusNames(kind)
    folder.mkdir(parents=True, exist_ok=True)
    health_port = free_port()
    config = write_config(folder / "listen.toml", dsns, "http://placeholder", folder / "reports")
    with SandboxProcess(dsns.sandbox, bus=json.dumps(names.options())) as sandbox:
        text = config.read_text(encoding="utf-8").replace("http://placeholder", sandbox.base_url)
        config.write_text(text + "\n" + names.toml(health_port, concurrency=concurrency), encoding="utf-8")
        if latency_ms:
            sandbox.admin.set_faults(latency_ms=latency_ms)
        with httpx.Client() as http:  # one client: a new one per request costs ~50 ms (TLS context set-up)
            yield ListenerWorld(dsns, names, sandbox, config, folder, health_port, http)


async def _publish(settings: BusSettings, bodies: list[bytes], content_type: str | None, routing_key: str) -> None:
    bus = Bus(settings, client_id=f"{settings.client_id}-pub", consumer=False)
    await bus.start()
    try:
        for body in bodies:
            await bus.publish(body, routing_key=routing_key, content_type=content_type)
    finally:
        await bus.stop()


async def _publish_mqtt5(settings: BusSettings, bodies: list[bytes], content_type: str) -> None:
    """Publish with the MQTT 5 content-type property (FastStream labels only what it encodes itself)."""
    import zmqtt  # noqa: PLC0415

    host, port = BROKERS["mqtt"]
    async with zmqtt.create_client(host, port, client_id=f"{settings.client_id}-pub5", version="5.0") as client:
        for body in bodies:
            await client.publish(
                settings.topic,
                body,
                qos=zmqtt.QoS.AT_LEAST_ONCE,
                properties=zmqtt.PublishProperties(content_type=content_type),
            )


class MqttDeadLetters:
    """Collects what the listener dead-letters on an MQTT test bus (subscribed before anything is published)."""

    def __init__(self, names: BusNames) -> None:
        self.names = names
        self.found: list[tuple[bytes, str]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._collect()), daemon=True)

    def __enter__(self) -> MqttDeadLetters:
        self._thread.start()
        assert self._ready.wait(20), "could not subscribe to the dead-letter topic"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _collect(self) -> None:
        import zmqtt  # noqa: PLC0415

        host, port = BROKERS["mqtt"]
        settings = self.names.settings()
        client = zmqtt.create_client(host, port, client_id=f"{settings.client_id}-dlq", version="5.0")
        async with client, client.subscribe(settings.dead_letter, qos=zmqtt.QoS.AT_LEAST_ONCE) as subscription:
            self._ready.set()
            while not self._stop.is_set():
                try:
                    message = await asyncio.wait_for(subscription.get_message(), 0.5)
                except TimeoutError:
                    continue
                props = dict(message.properties.user_properties) if message.properties else {}
                self.found.append((bytes(message.payload), str(props.get(DEAD_LETTER_REASON))))

    def wait_for(self, expected: int, timeout: float = 20.0) -> list[tuple[bytes, str]]:
        wait_until(lambda: len(self.found) >= expected, timeout, f"{expected} dead letters")
        return list(self.found)


@dataclass
class ProbeLog:
    """Samples ``/readyz`` and the oldest-unacknowledged age from ``/metrics`` in a thread, until stopped."""

    listener: ListenerProcess
    samples: list[tuple[int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> ProbeLog:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        while not self._stop.is_set():
            status = self.listener.probe("/readyz")
            try:
                age = metric_value(self.listener.metrics(), "batch_bus_oldest_unacked_age_seconds")
            except httpx.HTTPError:
                age = -1.0
            self.samples.append((status, age))
            self._stop.wait(0.2)


def metric_value(text: str, name: str) -> float:
    """The value of the first sample of ``name`` in a Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def read_dead_letters(names: BusNames, expected: int, timeout: float = 20.0) -> list[tuple[bytes, str]]:
    """The dead-lettered messages (body, reason header) of a RabbitMQ test bus."""

    async def read() -> list[tuple[bytes, str]]:
        from faststream.rabbit import RabbitBroker, RabbitQueue  # noqa: PLC0415

        broker = RabbitBroker(names.settings().rabbitmq_url, logger=None)
        subscriber = broker.subscriber(RabbitQueue(names.settings().dead_letter, durable=True), persistent=False)
        await broker.start()
        found: list[tuple[bytes, str]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(found) < expected and time.monotonic() < deadline:
                message = await subscriber.get_one(timeout=1.0)
                if message is not None:
                    found.append((bytes(message.body), str(message.headers.get(DEAD_LETTER_REASON))))
        finally:
            await broker.stop()
        return found

    return asyncio.run(read())


# -- the outcome, from the databases ---------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def completed(dsns: Dsns, portfolio_ids: list[str]) -> int:
    rows = fetch(
        dsns.journal,
        "SELECT count(DISTINCT portfolio_id) AS n FROM batch.payouts"
        " WHERE state = 'COMPLETED' AND portfolio_id = ANY(%s)",
        [portfolio_ids],
    )
    return int(rows[0]["n"])


def inbox(dsns: Dsns) -> list[dict[str, Any]]:
    return fetch(dsns.journal, "SELECT * FROM batch.bus_inbox ORDER BY received_at")


@dataclass(frozen=True)
class PaidOnce:
    """Per portfolio: payouts in the journal, ledger transfers, InvestSuite transactions and events."""

    journal: Counter[str]
    ledger: Counter[str]
    transactions: Counter[str]
    events: Counter[str]


def paid_counts(dsns: Dsns, portfolios: dict[str, str]) -> PaidOnce:
    """``portfolios``: portfolio id -> its ledger account reference."""
    by_account = {ref: pid for pid, ref in portfolios.items()}
    journal = Counter(
        r["portfolio_id"]
        for r in fetch(dsns.journal, "SELECT portfolio_id FROM batch.payouts WHERE state <> 'CANCELLED'")
        if r["portfolio_id"] in portfolios
    )
    ledger = Counter(
        by_account[r["reference"]]
        for r in fetch(
            dsns.ledger,
            "SELECT a.reference FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.debit_account_id"
            " JOIN ledger.accounts c ON c.id = t.credit_account_id WHERE c.kind = 'PAYOUT_CLEARING'",
        )
        if r["reference"] in by_account
    )
    transactions = Counter(
        r["portfolio_id"]
        for r in fetch(dsns.sandbox, "SELECT portfolio_id FROM sandbox.transactions")
        if r["portfolio_id"] in portfolios
    )
    events = Counter(
        r["portfolio"]
        for r in fetch(dsns.sandbox, "SELECT response->'data'->>'portfolio' AS portfolio FROM sandbox.events")
        if r["portfolio"] in portfolios
    )
    return PaidOnce(journal, ledger, transactions, events)
