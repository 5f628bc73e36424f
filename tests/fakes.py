"""In-memory fakes at the ports: the journal, InvestSuite and the ledger, for the engine's unit tests.

They keep the same guarantees as the real adapters where the engine relies on them (guarded state
transitions, idempotency keys, the sandbox's strict write rules) and can *crash* the engine at any
boundary: a ``Crash`` (a BaseException, so nothing in the engine catches it) raised right after a journal
write commits, or right after a remote effect is applied but before its answer comes back. A crashed
engine is thrown away and a new one resumes from what the fakes hold, as a new process would.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from batch import codec
from batch.adapters.bus import Delivery
from batch.adapters.investsuite_models import EventReceipt, RemotePortfolio, RemoteTransaction
from batch.domain.payout import EXECUTABLE_STATES, FlowKind, PayoutState, Step, check_transition
from batch.domain.records import PayoutRecord
from batch.errors import (
    InsufficientFundsError,
    InvalidTransitionError,
    LedgerConflictError,
    NotFoundError,
    RemotePermanentError,
)
from batch.sandbox import rules
from batch.sandbox.deposits import deposit_refusal


class Crash(BaseException):
    """The process dies here."""


@dataclass
class Boundaries:
    """Where to crash: ``point`` names a boundary (e.g. ``LEDGER_POST.intent``); it fires ``times`` times."""

    point: str | None = None
    times: int = 1
    seen: list[str] = field(default_factory=list)

    def reached(self, point: str) -> None:
        self.seen.append(point)
        if self.point == point and self.times > 0:
            self.times -= 1
            raise Crash(point)


# -- the journal --------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    id: int
    payout_id: uuid.UUID
    run_id: uuid.UUID
    step: str
    intent: Mapping[str, Any]
    outcome: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


_FIELDS = frozenset(PayoutRecord.__dataclass_fields__)


def _known(updates: Mapping[str, Any] | None) -> dict[str, Any]:
    """The updates a PayoutRecord carries (the journal keeps a few more columns, e.g. event_status)."""
    return {k: v for k, v in (updates or {}).items() if k in _FIELDS}


class FakeJournal:
    """``batch.service.engine.ports.JournalPort`` in memory: guarded transitions, leases, attempts, crashes."""

    def __init__(self, boundaries: Boundaries | None = None) -> None:
        self.boundaries = boundaries or Boundaries()
        self.operations: dict[uuid.UUID, PayoutRecord] = {}
        self.attempts: list[Attempt] = []
        self.audit: list[tuple[str, Mapping[str, Any]]] = []
        self.revised: dict[uuid.UUID, tuple[str, str]] = {}
        self.stalled: dict[uuid.UUID, uuid.UUID] = {}
        self.leases: dict[uuid.UUID, str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, operation: PayoutRecord) -> None:
        self.operations[operation.id] = operation

    def release_all(self) -> None:
        """What marking a dead run ABANDONED does to its leases."""
        self.leases.clear()

    def executable_left(self) -> bool:
        """Whether an operation is still waiting for a step (and not stalled)."""
        return any(op.state in EXECUTABLE_STATES and op.id not in self.stalled for op in self.operations.values())

    # claims and reads
    def claim_payouts(
        self,
        *,
        worker: str,
        limit: int,
        lease_seconds: int,
        states: Sequence[PayoutState],
        flows: Sequence[FlowKind] | None = None,
        portfolio_ids: Sequence[str] | None = None,
        run_id: uuid.UUID | None = None,
        not_stalled_in: uuid.UUID | None = None,
    ) -> list[PayoutRecord]:
        with self._lock:
            claimed: list[PayoutRecord] = []
            for op in self.operations.values():
                if len(claimed) >= limit:
                    break
                if op.state not in states or op.id in self.leases:
                    continue
                if flows is not None and op.flow not in flows:
                    continue
                if not_stalled_in is not None and self.stalled.get(op.id) == not_stalled_in:
                    continue
                self.leases[op.id] = worker
                claimed.append(op)
            return claimed

    def release_lease(self, payout_id: uuid.UUID, worker: str) -> None:
        with self._lock:
            if self.leases.get(payout_id) == worker:
                del self.leases[payout_id]

    def get_payout(self, payout_id: uuid.UUID) -> PayoutRecord | None:
        return self.operations.get(payout_id)

    def attempts_by_step(
        self, payout_ids: Sequence[uuid.UUID], run_id: uuid.UUID
    ) -> dict[tuple[uuid.UUID, str], tuple[int, int]]:
        counts: dict[tuple[uuid.UUID, str], list[int]] = defaultdict(lambda: [0, 0])
        for a in self.attempts:
            if a.payout_id in payout_ids:
                counts[(a.payout_id, a.step)][0] += 1
                if a.run_id == run_id and a.outcome in ("TRANSIENT_ERROR", "PERMANENT_ERROR"):
                    counts[(a.payout_id, a.step)][1] += 1
        return {key: (n, failed) for key, (n, failed) in counts.items()}

    # the guarded writes
    def _guard(self, payout: PayoutRecord, worker: str | None) -> PayoutRecord:
        current = self.operations[payout.id]
        if current.state is not payout.state or (worker is not None and self.leases.get(payout.id) != worker):
            raise InvalidTransitionError(f"{payout.id} is no longer {payout.state} under {worker}")
        return current

    def begin_step(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        intent: Mapping[str, Any],
        payout_updates: Mapping[str, Any] | None = None,
    ) -> int:
        with self._lock:
            current = self._guard(payout, worker)
            self.operations[payout.id] = replace(current, **_known(payout_updates))
            attempt = Attempt(next(self._ids), payout.id, run_id, step.value, dict(intent))
            self.attempts.append(attempt)
        self.boundaries.reached(f"{step.value}.intent")
        return attempt.id

    def finish_step(
        self,
        payout: PayoutRecord,
        attempt_id: int,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        outcome: str,
        detail: Mapping[str, Any],
        through: Sequence[PayoutState] = (),
        payout_updates: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> PayoutRecord:
        self.boundaries.reached(f"{step.value}.before_outcome")
        with self._lock:
            attempt = next(a for a in self.attempts if a.id == attempt_id)
            attempt.outcome, attempt.detail = outcome, dict(detail)
            if not through and not payout_updates:
                self.audit.append((f"step.{step.value.lower()}.{outcome.lower()}", detail))
                return payout
            current = self._guard(payout, worker)
            state = current.state
            for target in through:
                check_transition(state, target, current.flow)
                state = target
            stamps: dict[str, Any] = (
                {"ledger_posted_at": datetime.now(UTC)} if PayoutState.LEDGER_POSTED in through else {}
            )
            updated = replace(current, state=state, **_known(payout_updates), **stamps)
            self.operations[payout.id] = updated
            if state is PayoutState.COMPLETED:
                self.leases.pop(payout.id, None)
            self.audit.append((f"step.{step.value.lower()}.{outcome.lower()}", detail))
        self.boundaries.reached(f"{step.value}.outcome")
        return updated

    def _stop(self, payout: PayoutRecord, target: PayoutState, worker: str | None, **changes: Any) -> PayoutRecord:
        current = self._guard(payout, worker)
        check_transition(current.state, target, current.flow)
        updated = replace(current, state=target, **changes)
        self.operations[payout.id] = updated
        self.leases.pop(payout.id, None)
        return updated

    def _close(self, attempt_id: int | None, outcome: str, detail: Mapping[str, Any]) -> None:
        for a in self.attempts:
            if a.id == attempt_id and a.outcome is None:
                a.outcome, a.detail = outcome, dict(detail)

    def needs_attention(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID | None,
        step: Step | None,
        actor: str,
        worker: str | None,
        error: str,
        evidence: Mapping[str, Any] | None = None,
        attempt_id: int | None = None,
    ) -> PayoutRecord:
        with self._lock:
            self._close(attempt_id, "PERMANENT_ERROR", {"error": error})
            updated = self._stop(
                payout,
                PayoutState.NEEDS_ATTENTION,
                worker,
                failing_step=step.value if step else None,
                last_error=error,
                stopped_in_state=payout.state.value,
            )
            self.audit.append(("payout.needs_attention", {"error": error, **(evidence or {})}))
            return updated

    def cancel_before_ledger(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID | None,
        actor: str,
        worker: str | None,
        reason: str,
        revise: tuple[str, str] | None,
        attempt_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> PayoutRecord:
        with self._lock:
            self._close(attempt_id, "REFUSED", detail or {})
            if payout.ledger_reference is not None:
                raise InvalidTransitionError("money moved: it cannot be cancelled")
            updated = self._stop(payout, PayoutState.CANCELLED, worker, last_error=reason)
            if revise is not None:
                self.revised[payout.id] = revise
            self.audit.append(("payout.cancelled", {"reason": reason, **(detail or {})}))
            return updated

    def revise_after_money_moved(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        actor: str,
        decision: str,
        reason: str,
        note: str,
        evidence: Mapping[str, Any],
    ) -> None:
        with self._lock:
            self.revised[payout.id] = (decision, reason)
            self.audit.append(("payout.decision_revised", {"reason": reason, **evidence}))

    def stall(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        failures: int,
        error: str,
    ) -> PayoutRecord:
        with self._lock:
            current = self._guard(payout, worker)
            self.stalled[payout.id] = run_id
            self.leases.pop(payout.id, None)
            updated = replace(current, failing_step=step.value, last_error=error)
            self.operations[payout.id] = updated
            self.audit.append(("payout.stalled", {"failures": failures}))
            return updated


# -- InvestSuite -------------------------------------------------------------------------------------------


def _wire(body: Any) -> Any:
    """A body as the server receives it: JSON text, exponent form remembered."""
    return codec.loads(codec.dumps(body), parse_float=rules.parse_request_float)


class FakeInvestSuite:
    """``InvestSuitePort`` in memory, with the sandbox's strict write rules and crash/fault hooks."""

    def __init__(self, boundaries: Boundaries | None = None) -> None:
        self.boundaries = boundaries or Boundaries()
        self.portfolios: dict[str, dict[str, Any]] = {}
        self.transactions: list[dict[str, Any]] = []
        self.events: dict[str, tuple[str, Any]] = {}
        self.applied: dict[str, int] = defaultdict(int)  # writes applied, by kind
        self.listings = 0  # listing requests of ``transactions_by_external_id`` (100 ids each, as the client)
        #: (method, portfolio id or None) -> exception to raise before doing anything, once
        self.fail_next: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    def _fault(self, name: str) -> None:
        exc = self.fail_next.pop(name, None)
        if exc is not None:
            raise exc

    def _answer(self, name: str) -> None:
        """The effect is applied; a crash here loses its answer."""
        self.boundaries.reached(f"{name}.applied")

    @staticmethod
    def _refused(problem: rules.Problem) -> RemotePermanentError:
        body = codec.dumps(problem.body)
        return RemotePermanentError(f"HTTP {problem.status}: {body}", status=problem.status, body=body)

    def get_portfolio(self, portfolio_id: str) -> RemotePortfolio:
        self._fault("get_portfolio")
        doc = self.portfolios.get(portfolio_id)
        if doc is None:
            raise NotFoundError(f"portfolio {portfolio_id} not found", status=404)
        return RemotePortfolio.model_validate(codec.loads(codec.dumps(doc, exact=True)))

    def find_transactions(self, portfolio_id: str, external_id: str) -> list[RemoteTransaction]:
        self._fault("find_transactions")
        return [
            RemoteTransaction.model_validate(t)
            for t in self.transactions
            if t["portfolio_id"] == portfolio_id and t["external_id"] == external_id
        ]

    def transactions_by_external_id(self, portfolio_id: str, ids: Sequence[str]) -> dict[str, list[RemoteTransaction]]:
        """As the client's bulk read: one listing request per 100 distinct ids (``listings``), exact matches, every
        id asked a key, a quote refused before any request, 404 for a portfolio InvestSuite does not know."""
        self._fault("transactions_by_external_id")
        wanted = sorted(set(ids))
        if any("'" in external_id or not external_id for external_id in wanted):
            raise ValueError("an external_id must be non-empty and must not contain a single quote (query language)")
        if portfolio_id not in self.portfolios:
            raise NotFoundError(f"portfolio {portfolio_id} not found", status=404)
        with self._lock:
            self.listings += -(-len(wanted) // 100)
            rows = [t for t in self.transactions if t["portfolio_id"] == portfolio_id]
        return {
            external_id: [RemoteTransaction.model_validate(t) for t in rows if t["external_id"] == external_id]
            for external_id in wanted
        }

    def create_transaction(self, portfolio_id: str, body: dict[str, Any]) -> RemoteTransaction:
        self._fault("create_transaction")
        try:
            valid = rules.validate_transaction(_wire(body))
        except rules.Problem as problem:
            raise self._refused(problem) from None
        if portfolio_id not in self.portfolios:
            raise NotFoundError(f"portfolio {portfolio_id} not found", status=404)
        with self._lock:
            doc = rules.transaction_document(portfolio_id, self.portfolios[portfolio_id]["base_currency"], valid)
            self.transactions.append(doc)
            self.applied["transaction"] += 1
        self._answer("create_transaction")
        return RemoteTransaction.model_validate(doc)

    def patch_portfolio(self, portfolio_id: str, fields: dict[str, Any]) -> RemotePortfolio:
        self._fault("patch_portfolio")
        try:
            patch = rules.validate_portfolio_patch(_wire(fields))
        except rules.Problem as problem:
            raise self._refused(problem) from None
        with self._lock:
            if portfolio_id not in self.portfolios:
                raise NotFoundError(f"portfolio {portfolio_id} not found", status=404)
            status, outcome = rules.apply_portfolio_patch(self.portfolios[portfolio_id], patch)
            if status != 200:
                raise RemotePermanentError(f"HTTP {status}: {outcome}", status=status)
            self.portfolios[portfolio_id] = outcome
            self.applied["patch"] += 1
        self._answer("patch_portfolio")
        return RemotePortfolio.model_validate(outcome)

    def post_event(self, kind: Literal["withdraw", "deposit"], *, idempotency_key: str, body: Any) -> EventReceipt:
        self._fault("post_event")
        try:
            data = rules.validate_event(_wire(body))
        except rules.Problem as problem:
            raise self._refused(problem) from None
        text = codec.dumps({"kind": kind, **data})
        with self._lock:
            seen = self.events.get(idempotency_key)
            if seen is not None and seen[0] != text:
                raise self._refused(rules.conflict_at(["header", "Idempotency-Key"], "reused", "conflict.key"))
            refusal = (
                deposit_refusal(self.portfolios[data["portfolio"]], data["currency"]) if kind == "deposit" else None
            )
            if seen is None and refusal is not None:  # as the sandbox: a refusal records nothing
                raise self._refused(refusal)
            if seen is None:
                self.events[idempotency_key] = (text, data)
                self.applied[f"event.{kind}"] += 1
                if kind == "deposit":
                    self._deposit(data, idempotency_key)
        self._answer("post_event")
        return EventReceipt(idempotency_key=idempotency_key, status_code=201, body={"id": f"E-{idempotency_key}"})

    def _deposit(self, data: Mapping[str, str], key: str) -> None:
        """InvestSuite's side of a deposit event: a SETTLED CASH_DEPOSIT, the cash raised, funded_since set."""
        doc = self.portfolios[data["portfolio"]]
        cash_key = f"${data['currency']}"
        holdings = dict(doc["portfolio"])
        holdings[cash_key] = Decimal(str(holdings.get(cash_key, 0))) + Decimal(data["amount"])
        self.portfolios[data["portfolio"]] = doc | {
            "portfolio": holdings,
            "funded_since": doc.get("funded_since") or datetime.now(UTC).isoformat(),
            "version": int(doc.get("version", 1)) + 1,
        }
        self.transactions.append(
            {
                "id": f"T-{key}",
                "portfolio_id": data["portfolio"],
                "external_id": key,
                "movements": [{"type": "CASH_DEPOSIT", "status": "SETTLED", "quantity": Decimal(data["amount"])}],
            }
        )


# -- the ledger ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeTransfer:
    reference: str
    idempotency_key: str
    debit: str
    credit: str
    amount: Decimal
    currency: str


class FakeLedger:
    """``LedgerPort`` in memory: balances, transfers keyed by idempotency key, the balance re-checked."""

    def __init__(self, boundaries: Boundaries | None = None) -> None:
        self.boundaries = boundaries or Boundaries()
        self.balances: dict[str, Decimal] = defaultdict(Decimal)
        self.transfers: dict[str, FakeTransfer] = {}
        self.fail_next: dict[str, BaseException] = {}
        self._refs = itertools.count(1)
        self._lock = threading.Lock()

    def get_transfer(self, idempotency_key: str) -> FakeTransfer | None:
        exc = self.fail_next.pop("get_transfer", None)
        if exc is not None:
            raise exc
        return self.transfers.get(idempotency_key)

    def _move(self, key: str, debit: str, credit: str, amount: Decimal, currency: str) -> FakeTransfer:
        exc = self.fail_next.pop("move", None)
        if exc is not None:
            raise exc
        with self._lock:
            existing = self.transfers.get(key)
            if existing is not None:
                if (existing.debit, existing.credit, existing.amount) != (debit, credit, amount):
                    raise LedgerConflictError(f"key {key} reused")
                return existing
            if self.balances[debit] < amount:
                raise InsufficientFundsError("short", available=self.balances[debit], requested=amount)
            transfer = FakeTransfer(f"LT-{next(self._refs):06d}", key, debit, credit, amount, currency)
            self.transfers[key] = transfer
            self.balances[debit] -= amount
            self.balances[credit] += amount
        self.boundaries.reached("ledger.applied")
        return transfer

    def post_payout(
        self,
        *,
        idempotency_key: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
        counterparty: str,
        description: str,
    ) -> FakeTransfer:
        return self._move(idempotency_key, account_reference, f"CLEARING-{currency}", amount, currency)

    def move_deposit(
        self,
        *,
        idempotency_key: str,
        credit_reference: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
    ) -> FakeTransfer:
        return self._move(idempotency_key, f"INCOMING-{currency}", account_reference, amount, currency)

    def reverse_deposit(self, *, idempotency_key: str, move_key: str, value_date: date) -> FakeTransfer:
        moved = self.transfers.get(move_key)
        if moved is None:
            raise LedgerConflictError(f"no move {move_key} to undo")
        return self._move(idempotency_key, moved.credit, moved.debit, moved.amount, moved.currency)


def all_transfers(ledger: FakeLedger, *, into: Callable[[FakeTransfer], bool] = lambda _t: True) -> list[FakeTransfer]:
    return [t for t in ledger.transfers.values() if into(t)]


class FakeBus:
    """The listener's ``BusPort`` in memory: ``deliver`` hands a message over; ``start`` may fail or hang."""

    kind = "rabbitmq"

    def __init__(self, *, start_fails: bool = False, start_hangs: bool = False, ack_fails: bool = False) -> None:
        self.start_fails, self.start_hangs, self.ack_fails = start_fails, start_hangs, ack_fails
        self.on_message: Callable[[Any], Any] | None = None
        self.acked: list[bytes] = []
        self.dead: list[tuple[bytes, str]] = []
        self.starts = 0
        self.stopped = False

    def consume(self, on_message: Callable[[Any], Any]) -> None:
        self.on_message = on_message

    async def start(self) -> None:
        self.starts += 1
        if self.start_hangs:
            await asyncio.Event().wait()
        if self.start_fails:
            raise ConnectionError("the bus is down")

    async def stop(self) -> None:
        self.stopped = True

    async def ping(self, timeout: float = 2.0) -> bool:
        return not (self.start_fails or self.start_hangs)

    async def dead_letter(self, body: bytes, reason: str) -> None:
        self.dead.append((body, reason))

    def delivery(self, body: bytes) -> Delivery:
        async def ack() -> None:
            if self.ack_fails:
                raise ConnectionError("channel closed")
            self.acked.append(body)

        return Delivery(body, ack, None, "portfolios.test")
