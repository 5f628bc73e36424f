"""The sandbox publishes InvestSuite's outbound events to a bus, so tests and the demo use the real path.

Off by default; ``--bus KIND --bus-url URL`` (or ``INVESTSUITE_SANDBOX_BUS`` / ``INVESTSUITE_SANDBOX_BUS_URL``)
turns it on; ``--bus`` also takes a JSON object of ``[bus]`` settings (``{"kind": "mqtt", "topic": ...}``)
for a bus whose names differ from the defaults. Whenever a portfolio changes in the sandbox — a PATCH,
or the admin endpoints below that act "as the app does" — the documented envelopes go to the topic:

    portfolios.creation              a portfolio was created           {id, external_id, owned_by_user_id}
    portfolios.status-update         its status changed                {id, external_id, value}
    portfolios.divest-amount-update  its divest amount changed         {id, external_id, divest_amount, currency}
    portfolios.removal               it was deleted                    {id, external_id}

The HTTP answer never waits for the bus: events are queued after the change is committed and a
background task publishes them in order (retrying while the bus is away). A sandbox killed with events
still queued loses them; the nightly run is the safety net for withdrawals.

Admin endpoints (no auth): ``POST /_sandbox/portfolios`` (create; body: ``seed.portfolio_document``
options, e.g. ``{"cash": "500.00", "divest_amount": 100}``), ``PUT /_sandbox/portfolios/{id}/divest``
(``{"divest_amount": ...}``), ``DELETE /_sandbox/portfolios/{id}`` (soft delete), ``GET /_sandbox/bus``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batch.adapters.bus import Bus
from batch.sandbox.rules import apply_portfolio_patch, not_found
from batch.sandbox.seed import portfolio_document, user_document
from batch.sandbox.store import Document, SandboxStore, dumps, loads, new_id, now_iso
from batch.settings import BusKind, BusSettings

logger = logging.getLogger(__name__)
BUS_ENV, BUS_URL_ENV = "INVESTSUITE_SANDBOX_BUS", "INVESTSUITE_SANDBOX_BUS_URL"
#: "page": publish the Events page's own shapes (issue 24) — a bare ``{"id"}`` removal on the routing key
#: ``portfolio.removal``, and every envelope with the page's placeholder ``created``
SHAPES_ENV = "INVESTSUITE_SANDBOX_EVENT_SHAPES"
PLACEHOLDER_CREATED = "-1000000000-01-01T00:00:00Z"


def as_published(event: Document, shapes: str) -> tuple[Document, str]:
    """The body and routing key an event goes out with: our envelope, or the Events page's shapes."""
    if shapes != "page":
        return event, f"portfolios.{event['action']}"
    if event["action"] == "removal":
        return {"id": event["data"]["id"]}, "portfolio.removal"
    return {**event, "created": PLACEHOLDER_CREATED}, f"portfolios.{event['action']}"


def envelope(action: str, data: Document) -> Document:
    """An event as the docs show it (subject ``portfolios``, version 1.0.0)."""
    return {
        "id": str(uuid.uuid4()),
        "created": now_iso(),
        "version": "1.0.0",
        "subject": "portfolios",
        "action": action,
        "data": data,
    }


def _divest(doc: Document) -> Any:
    return ((doc.get("config") or {}).get("manager_settings") or {}).get("divest_amount")


def events_for_change(old: Document | None, new: Document) -> list[Document]:
    """The events InvestSuite publishes for a change of one portfolio (``old`` None: it was created)."""
    ref = {"id": new["id"], "external_id": new.get("external_id")}
    if old is None:
        events = [envelope("creation", {**ref, "owned_by_user_id": new.get("owned_by_user_id")})]
        if _divest(new) not in (None, 0):
            events.append(_withdrawal(ref, new))
        return events
    events = []
    if new.get("deleted") and not old.get("deleted"):
        return [envelope("removal", ref)]
    if new.get("status") != old.get("status"):
        events.append(envelope("status-update", {**ref, "value": new.get("status")}))
    if _divest(new) != _divest(old):
        events.append(_withdrawal(ref, new))
    return events


def _withdrawal(ref: Document, doc: Document) -> Document:
    divest = _divest(doc)
    return envelope(
        "divest-amount-update",
        {**ref, "divest_amount": 0 if divest is None else divest, "currency": doc.get("base_currency")},
    )


@dataclass
class EventPublisher:
    """Queues the events of committed changes and publishes them from a background task."""

    settings: BusSettings | None = None
    _queue: asyncio.Queue[Document] = field(default_factory=asyncio.Queue, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    published: int = 0
    failures: int = 0
    #: "envelope" (default) or "page" (``$INVESTSUITE_SANDBOX_EVENT_SHAPES``)
    shapes: str = "envelope"

    @classmethod
    def from_options(cls, bus: str | None, url: str | None) -> EventPublisher:
        """``bus``: a kind (rabbitmq|mqtt|nats) or a JSON object of ``[bus]`` settings; None: off."""
        bus = bus or os.environ.get(BUS_ENV) or None
        url = url or os.environ.get(BUS_URL_ENV) or None
        if bus is None:
            return cls()
        options: dict[str, Any] = loads(bus) if bus.lstrip().startswith("{") else {"kind": bus}
        if url:
            options[f"{options.get('kind', 'rabbitmq')}_url"] = url
        return cls(BusSettings.model_validate(options), shapes=os.environ.get(SHAPES_ENV) or "envelope")

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    @property
    def kind(self) -> BusKind | None:
        return None if self.settings is None else self.settings.kind

    def changed(self, old: Document | None, new: Document) -> None:
        """Queue the events of a committed change (never blocks, never fails the request)."""
        if self.enabled:
            for event in events_for_change(old, new):
                self._queue.put_nowait(event)

    def watch(self, apply: Callable[[Document], tuple[int, Any]]) -> Watch:
        return Watch(self, apply)

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._pump(), name="sandbox-bus-publisher")

    async def stop(self, drain_seconds: float = 5.0) -> None:
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _bus(self) -> Bus:
        assert self.settings is not None
        return Bus(self.settings, client_id=f"investsuite-sandbox-{os.getpid()}", consumer=False)

    async def _pump(self) -> None:
        bus: Bus | None = None
        try:
            while True:
                event = await self._queue.get()
                while True:
                    try:
                        if bus is None:
                            bus = self._bus()
                            await bus.start()
                        body, routing_key = as_published(event, self.shapes)
                        await bus.publish(dumps(body).encode(), routing_key=routing_key)
                        self.published += 1
                        break
                    except Exception:  # the bus is away: keep the event and try again
                        self.failures += 1
                        logger.warning("sandbox.bus_publish_failed", exc_info=True)
                        if bus is not None:
                            with contextlib.suppress(Exception):
                                await bus.stop()
                        bus = None
                        await asyncio.sleep(0.5 + random.random())
                self._queue.task_done()
        finally:
            if bus is not None:
                with contextlib.suppress(Exception):
                    await bus.stop()


@dataclass
class Watch:
    """Wraps a PATCH's ``apply``: remembers the document before and after, publishes once committed."""

    publisher: EventPublisher
    apply: Callable[[Document], tuple[int, Any]]
    before: Document | None = None

    def __call__(self, document: Document) -> tuple[int, Any]:
        self.before = document
        return self.apply(document)

    def committed(self, status: int, after: Any) -> None:
        if status == 200 and isinstance(after, dict) and self.before is not None:
            self.publisher.changed(self.before, after)


# -- admin endpoints ------------------------------------------------------------------------------------


class Sandbox(Protocol):
    """What the admin routes use of the sandbox app (``batch.sandbox.app.Sandbox``), without importing it back."""

    store: SandboxStore
    events: EventPublisher


def admin_routes(sandbox: Sandbox) -> list[Route]:
    def respond(payload: Any, status: int = 200) -> Response:
        return Response(dumps(payload), status_code=status, media_type="application/json")

    async def create(request: Request) -> Response:
        options = loads(await request.body() or b"{}")
        rng = random.Random()
        user_id, portfolio_id, index = new_id("U"), new_id("P"), rng.randrange(1, 999_999)
        for name in ("cash",):
            if name in options:
                options[name] = Decimal(str(options[name]))
        counter_account = bool(options.pop("counter_account", True))
        doc = portfolio_document(portfolio_id, user_id, index, **options)
        user = user_document(user_id, index, rng, counter_account=counter_account)
        await sandbox.store.insert_portfolio(doc, user)
        sandbox.events.changed(None, doc)
        return respond(doc, 201)

    async def change(request: Request, patch: Document) -> Response:
        portfolio_id = request.path_params["portfolio_id"]
        watch = sandbox.events.watch(lambda document: apply_portfolio_patch(document, patch))
        status, outcome = await sandbox.store.patch_portfolio(portfolio_id, watch)
        if status == 404:
            raise not_found(f"portfolio {portfolio_id} not found")
        watch.committed(status, outcome)
        return respond(outcome, status)

    async def set_divest(request: Request) -> Response:
        """As the app does: the customer asks for cash (the divest amount is a total)."""
        body = loads(await request.body())
        portfolio_id = request.path_params["portfolio_id"]
        current = await sandbox.store.portfolio_text(portfolio_id)
        if current is None:
            raise not_found(f"portfolio {portfolio_id} not found")
        config = loads(current)["config"]
        config["manager_settings"]["divest_amount"] = body.get("divest_amount")
        return await change(request, {"config": config})

    async def delete(request: Request) -> Response:
        return await change(request, {"deleted": True})

    async def bus_stats(request: Request) -> Response:
        publisher = sandbox.events
        return respond(
            {
                "enabled": publisher.enabled,
                "kind": publisher.kind,
                "published": publisher.published,
                "pending": publisher._queue.qsize(),
                "failures": publisher.failures,
            }
        )

    return [
        Route("/_sandbox/portfolios", create, methods=["POST"]),
        Route("/_sandbox/portfolios/{portfolio_id}/divest", set_divest, methods=["PUT"]),
        Route("/_sandbox/portfolios/{portfolio_id}", delete, methods=["DELETE"]),
        Route("/_sandbox/bus", bus_stats, methods=["GET"]),
    ]
