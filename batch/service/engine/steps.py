"""The step engine: one loop that drives every flow's operations exactly once, whatever crashes.

For each claimed operation the engine finds the step that moves its state on (``batch.domain.payout``)
and runs the flow's ``StepSpec`` for it (``batch.domain.flow``):

1. an earlier attempt of the step exists (its outcome may be unknown): ``read_back`` first — adopt what
   was done, stop for a person on evidence that fits neither, or go on with what it read;
2. ``observe`` (a fresh read, if the step needs one) and the pure ``prepare``: the write, or a stop
   (``Cancel`` before money moved, ``Attention`` for a person);
3. the intent is recorded (durably, one statement) — then ``call`` — then the outcome and the state
   change are recorded (one statement, with the audit row).

Transient failures (5xx, timeouts, 429, an unreachable ledger) are retried with stamina's jittered
backoff (``Retry-After`` honoured), reading the operation back between tries; the budget is
``max_step_attempts`` recorded failures per step and run. An attempt cut off by a crash is not a failure.
A step that spends its budget on transient failures only is *stalled*: left in its state for the next
run (alerted), never parked for a person. Permanent refusals stop the operation for a person. A
configuration error (refused credentials) stops the whole run.

Operations are claimed from the journal with ``FOR UPDATE SKIP LOCKED`` and a lease renewed at every
intent, so several processes (workers, the bus listener, a nightly run) share one journal. Threads,
not asyncio: one synchronous code path, bounded by ``concurrency``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import stamina
import structlog

from batch.domain.flow import Attention, Cancel, Divert, Done, Flow, StepSpec, Write
from batch.domain.payout import EXECUTABLE, FlowKind, PayoutState, Step, divert_target, next_step
from batch.domain.ports import Ports
from batch.domain.records import PayoutRecord
from batch.errors import BatchError, ConfigError, InvalidTransitionError, TransientError
from batch.service.engine.ports import JournalPort
from batch.service.engine.seams import crash_point

log = structlog.get_logger("batch.engine")


class _Stop(Exception):
    """Internal: the operation stopped (NEEDS_ATTENTION, CANCELLED or stalled); carries the new record."""

    def __init__(self, operation: PayoutRecord) -> None:
        super().__init__(str(operation.id))
        self.operation = operation


def _backoff(exc: Exception) -> bool | float:
    """stamina's hook: retry transient errors only, waiting at least what ``Retry-After`` asked."""
    if not isinstance(exc, TransientError):
        return False
    return float(exc.retry_after) if exc.retry_after else True


@dataclass
class ExecutionStats:
    by_state: Counter[str] = field(default_factory=Counter)
    step_seconds: list[float] = field(default_factory=list)

    def add(self, operation: PayoutRecord, seconds: float) -> None:
        self.by_state[operation.state.value] += 1
        self.step_seconds.append(seconds)


@dataclass
class Engine:
    """Drives operations of the given flows for one run. ``execute`` may be called more than once."""

    journal: JournalPort
    ports: Ports
    flows: Mapping[FlowKind, Flow]
    run_id: uuid.UUID
    actor: str
    worker: str
    concurrency: int = 8
    max_step_attempts: int = 8
    lease_seconds: int = 300
    on_done: Callable[[PayoutRecord], None] | None = None
    #: called before each retry of a step (a test seam: change the world between two tries)
    between_tries: Callable[[], None] | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    #: attempts per (operation, step): (all so far, failed ones in this run), loaded per claimed batch and
    #: counted up locally. An intent a crash cut off makes the next attempt read back first, nothing more.
    _attempts: dict[tuple[uuid.UUID, str], tuple[int, int]] = field(default_factory=dict, repr=False)

    # -- the loop ----------------------------------------------------------------------------------------
    def execute(
        self, *, portfolio_ids: Sequence[str] | None = None, run_scope: uuid.UUID | None = None
    ) -> ExecutionStats:
        """Claim and drive executable operations until none is left (or a stop is requested)."""
        stats = ExecutionStats()
        # a small queue beyond the threads: a claimed operation waits at most one operation's time. It is
        # refilled once half of it is taken, not after every completion: one claim (and its attempts query)
        # per few operations instead of one per operation, and the threads never wait for a claim
        batch = self.concurrency + max(1, self.concurrency // 4)
        refill_at = self.concurrency + (batch - self.concurrency) // 2
        states = sorted(frozenset().union(*(EXECUTABLE[kind] for kind in self.flows)))
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="operation") as pool:
            in_flight: set[Future[tuple[PayoutRecord, float]]] = set()
            exhausted = False
            while True:
                if not exhausted and not self.stop_requested.is_set() and len(in_flight) <= refill_at:
                    claimed = self.journal.claim_payouts(
                        worker=self.worker,
                        limit=batch - len(in_flight),
                        lease_seconds=self.lease_seconds,
                        states=states,
                        flows=sorted(self.flows),
                        portfolio_ids=portfolio_ids,
                        run_id=run_scope,
                        not_stalled_in=self.run_id,
                    )
                    exhausted = not claimed
                    self._attempts.update(self.journal.attempts_by_step([op.id for op in claimed], self.run_id))
                    for operation in claimed:
                        in_flight.add(pool.submit(self._timed_drive, operation))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    operation, seconds = future.result()  # a journal failure propagates: the run fails
                    stats.add(operation, seconds)
                    if self.on_done is not None:
                        self.on_done(operation)
        return stats

    def _timed_drive(self, operation: PayoutRecord) -> tuple[PayoutRecord, float]:
        started = time.monotonic()
        bound = structlog.contextvars.bound_contextvars(
            run_id=str(self.run_id),
            business_date=str(operation.business_date),
            portfolio_id=operation.portfolio_id,
            payout_id=str(operation.id),
            flow=operation.flow.value,
        )
        with bound:
            result: PayoutRecord | None = None
            try:
                result = self.drive(operation)
            except InvalidTransitionError as exc:
                log.warning("payout.lost_race", error=str(exc))
                result = self.journal.get_payout(operation.id) or operation
            finally:
                # a completed or stopped operation's lease was cleared with its last state change
                if result is None or result.lease_owner is not None:
                    self.journal.release_lease(operation.id, self.worker)
                for step in Step:
                    self._attempts.pop((operation.id, step.value), None)
        return result, time.monotonic() - started

    def drive(self, operation: PayoutRecord) -> PayoutRecord:
        """Move one operation forward until it completes or stops."""
        flow = self.flows[operation.flow]
        while (move := next_step(operation.flow, operation.state)) is not None:
            if self.stop_requested.is_set():
                return operation  # graceful stop: the step in flight finished, the rest waits for the next run
            step, through = move
            try:
                operation = self._step(operation, flow.spec(step), through)
            except _Stop as stop:
                return stop.operation
        return operation

    def _step(self, operation: PayoutRecord, spec: StepSpec, through: tuple[PayoutState, ...]) -> PayoutRecord:
        """One step, retried on transient failures within this run's budget; stalled when it is spent."""
        key = (operation.id, spec.step.value)
        failed_before = self._attempts.get(key, (0, 0))[1]
        budget = self.max_step_attempts - failed_before
        failures, last_error = 0, ""
        if budget > 0:
            try:
                for attempt in stamina.retry_context(
                    on=_backoff, attempts=budget, timeout=None, wait_initial=0.2, wait_max=5.0, wait_jitter=0.3
                ):
                    with attempt:
                        if attempt.num > 1:
                            if self.between_tries is not None:
                                self.between_tries()
                            # the failed attempt may have recorded its intent (e.g. a holdings target) on the
                            # row: the read-back must compare against that, not against the claimed record
                            operation = self.journal.get_payout(operation.id) or operation
                            log.debug("payout.step_retry", step=spec.step.value, attempt=attempt.num, error=last_error)
                        try:
                            return self._attempt(operation, spec, through)
                        except TransientError as exc:
                            failures, last_error = failures + 1, str(exc)[:500]
                            raise
            except TransientError:
                pass
        raise _Stop(self._stall(operation, spec.step, failed_before + failures, last_error))

    def _attempt(self, operation: PayoutRecord, spec: StepSpec, through: tuple[PayoutState, ...]) -> PayoutRecord:
        """One try of a step: read back, observe, prepare, record the intent, call, record the outcome."""
        step = spec.step
        prior = self._attempts.get((operation.id, step.value), (0, 0))[0]
        seen: Any = None
        try:
            if prior > 0 and spec.read_back is not None:
                back = spec.read_back(self.ports, operation)
                if isinstance(back, Done):
                    attempt = self._begin(operation, step, {"read_back": True, **back.detail})
                    return self._finish(operation, attempt, step, "ADOPTED", back, through)
                if isinstance(back, Attention):
                    attempt = self._begin(operation, step, {"read_back": True, **back.evidence})
                    raise _Stop(self._attention(operation, step, back, attempt))
                seen = back.observation
            if seen is None and spec.observe is not None:
                seen = spec.observe(self.ports, operation)
        except (_Stop, TransientError, ConfigError):
            raise
        except BatchError as exc:
            raise _Stop(self._attention(operation, step, Attention(f"{step.value}: {exc}"))) from exc
        prepared = spec.prepare(operation, seen)
        if isinstance(prepared, Cancel):
            raise _Stop(self._cancel(operation, prepared))
        if isinstance(prepared, Attention):
            raise _Stop(self._attention(operation, step, prepared))
        attempt = self._begin(operation, step, {**prepared.intent, "prior_attempts": prior}, prepared.updates)
        called = self._call(operation, spec, prepared, attempt)
        if isinstance(called, Cancel):
            raise _Stop(self._cancel(operation, called, attempt))
        if isinstance(called, Attention):
            raise _Stop(self._attention(operation, step, called, attempt))
        if isinstance(called, Divert):
            if prior > 0:
                # an earlier try of this step may have been applied (a lost answer, a crash after the call): a
                # refusal now does not prove it never landed, so money is never moved back on it; a person looks
                why = f"{called.what}; an earlier attempt of {step.value} may have been applied, so it is not undone"
                raise _Stop(self._attention(operation, step, Attention(why, called.evidence), attempt))
            return self._divert(operation, step, called, attempt)
        return self._finish(operation, attempt, step, "OK", called, through)

    def _divert(self, operation: PayoutRecord, step: Step, refused: Divert, attempt: int) -> PayoutRecord:
        """Refused for good after money moved: enter the flow's compensation branch, revise the decision."""
        target = divert_target(operation.flow, operation.state)
        if target is None:  # no compensation declared for this state: a person decides
            raise _Stop(self._attention(operation, step, Attention(refused.what, refused.evidence), attempt))
        log.warning("payout.refused_after_money_moved", step=step.value, reason=refused.reason, what=refused.what)
        # the decision first: a crash before the state change leaves the step to be tried again (refused
        # again, revised again to the same), never an undone move whose credit still reads PAY
        self.journal.revise_after_money_moved(
            operation,
            run_id=self.run_id,
            actor=self.actor,
            decision=refused.decision,
            reason=refused.reason,
            note=refused.what,
            evidence=refused.evidence,
        )
        detail = {"refused": refused.what, "reason": refused.reason, **refused.evidence}
        return self._finish(operation, attempt, step, "REFUSED", Done(detail, note=refused.what), (target,))

    def _call(
        self, operation: PayoutRecord, spec: StepSpec, write: Write, attempt: int
    ) -> Done | Cancel | Attention | Divert:
        try:
            crash_point(f"{spec.step.value}.before")
            called = spec.call(self.ports, operation, write)
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except TransientError as exc:
            key = (operation.id, spec.step.value)
            total, failed = self._attempts.get(key, (0, 0))
            self._attempts[key] = (total, failed + 1)
            self.journal.finish_step(
                operation,
                attempt,
                run_id=self.run_id,
                step=spec.step,
                actor=self.actor,
                worker=self.worker,
                outcome="TRANSIENT_ERROR",
                detail={"error": str(exc)[:500], "type": type(exc).__name__},
            )
            raise
        except BatchError as exc:
            return Attention(f"{spec.step.value} refused: {exc}")
        crash_point(f"{spec.step.value}.after")
        return called

    # -- journal helpers ----------------------------------------------------------------------------------
    def _begin(
        self,
        operation: PayoutRecord,
        step: Step,
        intent: Mapping[str, Any],
        updates: Mapping[str, Any] | None = None,
    ) -> int:
        key = (operation.id, step.value)
        total, failed = self._attempts.get(key, (0, 0))
        self._attempts[key] = (total + 1, failed)
        return self.journal.begin_step(
            operation,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            intent=intent,
            payout_updates=updates,
        )

    def _finish(
        self,
        operation: PayoutRecord,
        attempt: int,
        step: Step,
        outcome: str,
        done: Done,
        through: tuple[PayoutState, ...],
    ) -> PayoutRecord:
        return self.journal.finish_step(
            operation,
            attempt,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            outcome=outcome,
            detail=done.detail,
            through=through,
            payout_updates=done.updates,
            note=done.note,
        )

    def _attention(
        self, operation: PayoutRecord, step: Step, stop: Attention, attempt: int | None = None
    ) -> PayoutRecord:
        log.warning("payout.needs_attention", step=step.value, error=stop.error)
        return self.journal.needs_attention(
            operation,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            error=stop.error,
            evidence=stop.evidence,
            attempt_id=attempt,
        )

    def _cancel(self, operation: PayoutRecord, stop: Cancel, attempt: int | None = None) -> PayoutRecord:
        log.debug("payout.cancelled_before_money_moved", reason=stop.reason, what=stop.what)
        return self.journal.cancel_before_ledger(
            operation,
            run_id=self.run_id,
            actor=self.actor,
            worker=self.worker,
            reason=stop.reason,
            revise=(stop.decision, stop.reason),
            attempt_id=attempt,
            detail={"what": stop.what, **stop.evidence},
            note=f"not done: {stop.what}",
        )

    def _stall(self, operation: PayoutRecord, step: Step, failures: int, error: str) -> PayoutRecord:
        """Leave an operation that only failed transiently for the next run (alerted, never parked)."""
        log.warning("payout.stalled", step=step.value, failures=failures, error=error, state=operation.state.value)
        return self.journal.stall(
            operation,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            failures=failures,
            error=error,
        )
