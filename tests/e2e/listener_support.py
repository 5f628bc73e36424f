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

    def start(self) -> ListenerProcess:
        self.log = self.cwd / f"listener-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                batch_command(self.config, "listen", "--bus", self.kind),
                env=batch_env() | {"BATCH_LOG_LEVEL": "INFO", "BATCH_BUS__HEALTH_PORT": str(self.health_port)},
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

    def listener(self, health_port: int | None = None) -> ListenerProcess:
        """A listener process (another ``health_port`` to run several beside each other)."""
        return ListenerProcess(self.config, self.names.kind, health_port or self.health_port, self.folder)

    def set_divest(self, portfolio_id: str, amount: Any) -> None:
        """As the app does: the customer asks for cash (the sandbox publishes the withdrawal event)."""
        response = self.http.put(
            f"{self.sandbox.base_url}/_sandbox/portfolios/{portfolio_id}/divest",
            content=json.dumps({"divest_amount": "AMOUNT"}).replace('"AMOUNT"', str(amount)),
            timeout=30.0,
        )
        response.raise_for_status()

    def publish(self, bodies: list[bytes]) -> None:
        """Publish raw messages on the event topic (what InvestSuite would send)."""
        asyncio.run(_publish(self.names.settings(), bodies))


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


async def _publish(settings: BusSettings, bodies: list[bytes]) -> None:
    bus = Bus(settings, client_id=f"{settings.client_id}-pub", consumer=False)
    await bus.start()
    try:
        for body in bodies:
            await bus.publish(body, routing_key="portfolios.test")
    finally:
        await bus.stop()


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
