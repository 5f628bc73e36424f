"""What the listener does with one message: record it in the inbox, decide, act, say what happened.

Called in a worker thread for each message the bus hands over (``batch.service.bus.listener``); returns
the verdict the consumer applies *after* everything here has been committed:

    ACK           handled, ignored (unknown subject/action, stale), or a duplicate: acknowledge
    DEAD_LETTER   poison (not JSON, a bad envelope, bad data) or failed ``max_attempts`` times:
                  dead-letter with the reason (recorded in the inbox first), then acknowledge
    RETRY         the journal could not record it, or the listener is stopping: leave it to the bus

Bus events are triggers; REST is the truth (DESIGN §9.7): a withdrawal event starts a fresh plan of that
one portfolio, it never carries the amount into a payout. Events of one portfolio are handled one after
the other (a lock per portfolio); the one-open-payout index keeps any other planner (the nightly run,
another listener) from opening a second payout.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import stamina
import structlog

from batch.adapters.bus_models import (
    Creation,
    Envelope,
    EventData,
    Poison,
    Removal,
    StatusUpdate,
    Withdrawal,
    parse_data,
    parse_message,
)
from batch.adapters.journal import Journal
from batch.adapters.journal.bus import BusStore
from batch.domain.events import INACTIVE, CancelAction, EventKind, OpenPayout, classify, is_stale, on_portfolio_gone
from batch.domain.events import version_understood as understood
from batch.domain.model import Reason
from batch.domain.payout import FlowKind, PayoutState
from batch.errors import InvalidTransitionError, TransientError

log = structlog.get_logger("batch.bus")


class WithdrawalTrigger(Protocol):
    """Starts the withdrawal flow for one portfolio (fresh read, decision, payout); returns what happened."""

    def trigger(self, portfolio_id: str, event_id: str) -> str: ...


class DepositTrigger(Protocol):
    """Starts the deposit check for one portfolio (the deposit flow); returns what happened."""

    def trigger(self, portfolio_id: str, event_id: str) -> str: ...


class Verdict(StrEnum):
    ACK = "ACK"
    DEAD_LETTER = "DEAD_LETTER"
    RETRY = "RETRY"


@dataclass(frozen=True)
class Handled:
    verdict: Verdict
    #: HANDLED, STALE, IGNORED, DUPLICATE, DEAD_LETTERED, FAILED or STOPPED
    status: str
    outcome: str
    kind: str | None = None
    #: seconds from the event's creation to the end of its handling (handled events only)
    latency: float | None = None


class KeyedLocks:
    """One lock per key (portfolio id), created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass
class BusEventHandler:
    store: BusStore
    journal: Journal
    bus: str
    withdrawals: WithdrawalTrigger
    deposits: DepositTrigger
    #: the listener run cancellations are audited under (None before the first one)
    current_run: Callable[[], uuid.UUID | None]
    worker: str
    actor: str = "listener"
    lease_seconds: int = 300
    max_attempts: int = 5
    stopping: threading.Event | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: a bigger body is poison (an event is a thin signal)
    max_body_bytes: int = 65536

    def __post_init__(self) -> None:
        self._locks = KeyedLocks()

    def handle(self, body: bytes, *, routing_key: str | None = None, message_id: str | None = None) -> Handled:
        """Decode, record and handle one message (``routing_key``: the event name where the bus carries it)."""
        parsed = parse_message(body, routing_key=routing_key, message_id=message_id, max_bytes=self.max_body_bytes)
        if isinstance(parsed, Poison):
            return self._poison(parsed, body)
        envelope = parsed
        kind = classify(envelope.subject, envelope.action) if understood(envelope.version) else None
        data: EventData | None = None
        if kind is not None:
            checked = parse_data(kind, envelope)
            if isinstance(checked, Poison):
                return self._poison(checked, body)
            data = checked
        portfolio_id = data.id if data is not None else envelope.portfolio_id
        with self._locks.hold(portfolio_id or envelope.id):
            return self._handle(envelope, kind, data, portfolio_id)

    def _poison(self, poison: Poison, body: bytes) -> Handled:
        self.store.dead_letter(poison.key, bus=self.bus, reason=poison.reason, body=body)
        log.warning("bus.poison", key=poison.key, reason=poison.reason)
        return Handled(Verdict.DEAD_LETTER, "DEAD_LETTERED", poison.reason)

    def _handle(
        self, envelope: Envelope, kind: EventKind | None, data: EventData | None, portfolio_id: str | None
    ) -> Handled:
        receipt = self.store.receive(
            event_id=envelope.id,
            bus=self.bus,
            subject=envelope.subject,
            action=envelope.action,
            kind=kind.value if kind else None,
            portfolio_id=portfolio_id,
            created=envelope.created,
            payload=envelope.data,
        )
        if receipt.duplicate:
            log.info("bus.duplicate", event_id=envelope.id, status=receipt.status, duplicates=receipt.duplicates)
            return Handled(Verdict.ACK, "DUPLICATE", f"duplicate of an event already {receipt.status}", kind)
        if kind is None or data is None:
            why = (
                f"unsupported envelope version {envelope.version!r}"
                if not understood(envelope.version)
                else f"unknown event {envelope.subject}.{envelope.action}"
            )
            self.store.finish(envelope.id, status="IGNORED", outcome=why)
            return Handled(Verdict.ACK, "IGNORED", why)
        assert portfolio_id is not None
        last = self.store.last_handled(portfolio_id, kind.value, envelope.id)
        if envelope.created is not None and is_stale(envelope.created, last):
            why = f"stale: created {envelope.created.isoformat()}, before the last {kind} handled ({last})"
            self.store.finish(envelope.id, status="STALE", outcome=why)
            return Handled(Verdict.ACK, "STALE", why, kind)
        bound = structlog.contextvars.bound_contextvars(event_id=envelope.id, portfolio_id=portfolio_id)
        with bound:
            return self._dispatch_with_retries(envelope, kind, data, receipt.attempts)

    def _dispatch_with_retries(self, envelope: Envelope, kind: EventKind, data: EventData, attempts: int) -> Handled:
        """Handle the event, retrying any failure through stamina; dead-letter it once the budget is spent.

        Earlier deliveries cut off by a crash count as attempts. On SIGTERM no further try is made: the
        message goes back to the bus unacknowledged.
        """
        failures = attempts - 1
        problem = ""

        def retry(_exc: Exception) -> bool:
            return not (self.stopping is not None and self.stopping.is_set())

        try:
            for attempt in stamina.retry_context(
                on=retry,
                attempts=max(1, self.max_attempts - failures),
                timeout=None,
                wait_initial=0.5,
                wait_max=10.0,
                wait_jitter=0.5,
            ):
                with attempt:
                    try:
                        outcome = self._dispatch(envelope, data)
                    except Exception as exc:  # InvestSuite or the ledger down, a bug: retried, then dead-lettered
                        failures += 1
                        problem = f"{type(exc).__name__}: {exc}"[:500]
                        log.warning("bus.handling_failed", kind=kind.value, failures=failures, error=problem)
                        if not isinstance(exc, TransientError):
                            log.exception("bus.handler_error", kind=kind.value)
                        raise
        except Exception:
            if self.stopping is not None and self.stopping.is_set():
                return Handled(Verdict.RETRY, "STOPPED", problem, kind)
            self.store.finish(envelope.id, status="FAILED", outcome=f"failed {failures} times: {problem}")
            return Handled(Verdict.DEAD_LETTER, "FAILED", f"failed {failures} times: {problem}", kind)
        self.store.finish(envelope.id, status="HANDLED", outcome=outcome, run_id=self.current_run())
        # an event whose creation time is unknown (the docs' placeholder) has no latency to measure
        latency = None if envelope.created is None else (self.now() - envelope.created).total_seconds()
        log.info("bus.handled", kind=kind.value, outcome=outcome, latency_seconds=latency and round(latency, 3))
        return Handled(Verdict.ACK, "HANDLED", outcome, kind, latency)

    # -- the handlers ------------------------------------------------------------------------------------
    def _dispatch(self, envelope: Envelope, data: EventData) -> str:
        if isinstance(data, Creation):
            new = self.store.register(
                portfolio_id=data.id, external_id=data.external_id, owner=data.owned_by_user_id, event_id=envelope.id
            )
            return "registered" if new else "already registered: last seen updated"
        if isinstance(data, StatusUpdate):
            self.store.registry_touch(
                portfolio_id=data.id,
                external_id=data.external_id,
                event_id=envelope.id,
                status=data.value,
                removed=False,
            )
            if data.value.strip().upper() != INACTIVE:
                return f"status {data.value} recorded"
            return self._portfolio_gone(data.id, Reason.PORTFOLIO_INACTIVE, envelope.id)
        if isinstance(data, Removal):
            self.store.registry_touch(
                portfolio_id=data.id, external_id=data.external_id, event_id=envelope.id, status=None, removed=True
            )
            return self._portfolio_gone(data.id, Reason.PORTFOLIO_REMOVED, envelope.id)
        if isinstance(data, Withdrawal):
            if not data.divest_amount:
                return "divest_amount 0: nothing requested (an open payout is re-checked before its ledger post)"
            return self.withdrawals.trigger(data.id, envelope.id)
        return self.deposits.trigger(data.id, envelope.id)

    def _portfolio_gone(self, portfolio_id: str, reason: Reason, event_id: str) -> str:
        """Cancel the portfolio's open payout if it has not reached the ledger; past it, it completes."""
        payout = self.store.open_payout(portfolio_id)
        action = on_portfolio_gone(None if payout is None else OpenPayout(payout.state, payout.ledger_reference))
        if payout is None or action is CancelAction.NOTHING_OPEN:
            return f"{reason}: no open payout"
        if action is CancelAction.LEFT_TO_COMPLETE:
            return f"{reason}: payout {payout.id} is past the ledger ({payout.state}): left to complete"
        if action is CancelAction.LEFT_FOR_OPERATOR:
            return f"{reason}: payout {payout.id} needs attention: left for an operator"
        worker: str | None = None
        if action is CancelAction.CLAIM_THEN_CANCEL:
            claimed = self.journal.claim_payouts(
                worker=self.worker,
                limit=1,
                lease_seconds=self.lease_seconds,
                states=[PayoutState.PLANNED],
                flows=[FlowKind.WITHDRAWAL],
                portfolio_ids=[portfolio_id],
                not_stalled_in=uuid.uuid4(),  # a payout stalled by a run may still be cancelled
            )
            if not claimed:
                return (
                    f"{reason}: payout {payout.id} is being executed elsewhere; "
                    "its fresh read before the ledger post decides"
                )
            payout, worker = claimed[0], self.worker
        try:
            self.journal.cancel_before_ledger(
                payout,
                run_id=self.current_run(),
                actor=self.actor,
                worker=worker,
                reason=reason,
                revise=("SKIP", reason),
                detail={"event_id": event_id},
                note=f"cancelled by bus event {event_id}",
            )
        except InvalidTransitionError as exc:
            if worker is not None:
                self.journal.release_lease(payout.id, worker)
            return f"{reason}: payout {payout.id} could not be cancelled ({exc})"
        return f"{reason}: payout {payout.id} ({payout.state}) cancelled before the ledger"
