"""Helpers for the bus-event tests: the listener's handler wired to the real app, and event bodies."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from batch.adapters.journal.bus import BusStore
from batch.bootstrap import App
from batch.service.bus.deposits import DepositCheck
from batch.service.bus.events import BusEventHandler
from batch.service.bus.withdrawal import ListenerRuns, PlanAndExecute


def event(
    action: str,
    data: dict[str, Any],
    *,
    event_id: str | None = None,
    created: datetime | None = None,
    subject: str = "portfolios",
    version: str = "1.0.0",
) -> bytes:
    """An envelope as InvestSuite publishes it (docs, *Events*), as raw bytes."""
    when = created or datetime.now(UTC)
    body = {
        "id": event_id or str(uuid.uuid4()),
        "created": when.isoformat(),
        "version": version,
        "subject": subject,
        "action": action,
        "data": data,
    }
    return json.dumps(body).encode()


def withdrawal(portfolio: dict[str, Any], amount: str, **kw: Any) -> bytes:
    """A ``divest-amount-update`` whose divest_amount is a JSON number written exactly as ``amount``."""
    text = event(
        "divest-amount-update",
        {
            "id": portfolio["id"],
            "external_id": portfolio.get("external_id"),
            "divest_amount": "AMOUNT",
            "currency": portfolio["base_currency"],
        },
        **kw,
    )
    return text.replace(b'"AMOUNT"', amount.encode())


def minutes_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=n)


@dataclass
class Wired:
    handler: BusEventHandler
    store: BusStore
    runs: ListenerRuns


@contextmanager
def listener_handler(app: App, *, max_attempts: int = 3) -> Iterator[Wired]:
    """The handler ``batch listen`` builds (real planner, executor, journal), without a bus."""
    instance = uuid.uuid4().hex
    worker = f"listener:test:{instance[:8]}"
    store = BusStore(app.journal_engine, lease_seconds=app.settings.run.lease_seconds)
    runs = ListenerRuns(app, bus="rabbitmq", instance=instance, worker=worker)
    stopping = threading.Event()
    handler = BusEventHandler(
        store=store,
        journal=app.journal,
        bus="rabbitmq",
        withdrawals=PlanAndExecute(app, store, runs),
        deposits=DepositCheck(app, runs),
        current_run=lambda: runs.current,
        worker=worker,
        max_attempts=max_attempts,
        stopping=stopping,
    )
    with store.instance_lock(instance, ttl_seconds=60):
        try:
            yield Wired(handler, store, runs)
        finally:
            runs.close()
