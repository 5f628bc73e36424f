"""Drive payouts through their steps, exactly once, with bounded concurrency.

Each payout is a persisted state machine (batch.domain.payout). For every external call the
journal first records the intent, then the outcome. An attempt that finds an earlier attempt of
the same step (whose outcome is unknown or failed) reads the remote state back before acting:

- LEDGER_POST          the ledger post is idempotent by key (= payout id) and re-checks the balance
                       under a row lock; short -> CANCELLED and the decision becomes DEFER.
- RECORD_TRANSACTION   look the transaction up by external_id (= ledger reference); adopt it if found.
- UPDATE_PORTFOLIO     one PATCH carrying the whole ``config`` (divest cleared) and the whole holdings
                       map (cash decreased to an absolute target); after an unknown outcome the fresh
                       GET decides: cash == target -> adopt, cash == base -> apply again, else stop.
- SEND_EVENT           ``POST /events/withdraw/`` with Idempotency-Key = payout id (replayed by the server).

Concurrency uses threads: the work is I/O bound, the httpx client and the SQLAlchemy pools are
thread-safe, and one code path serves both the single-threaded and the concurrent case. Payouts
are claimed from the journal with ``FOR UPDATE SKIP LOCKED`` and a lease, so several processes
(workers) can share one journal.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

import structlog

from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.investsuite_models import RemotePortfolio, RemoteTransaction
from batch.adapters.journal import Journal, PayoutRecord
from batch.adapters.ledger import Ledger, mask_account
from batch.domain import writes
from batch.domain.model import Decision, Reason
from batch.domain.money import parse_amount
from batch.domain.payout import EXECUTABLE_STATES, PayoutState, Step
from batch.domain.policy import Policy
from batch.domain.recheck import recheck
from batch.errors import (
    BatchError,
    ConfigError,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidRemoteDataError,
    InvalidTransitionError,
    NotFoundError,
    RemotePermanentError,
    TransientError,
)
from batch.service.crashpoints import crash_point

log = structlog.get_logger("batch.execute")
S = PayoutState


class _Stop(Exception):
    """Internal: the payout was stopped (NEEDS_ATTENTION or CANCELLED); carries the new record."""

    def __init__(self, payout: PayoutRecord) -> None:
        super().__init__(str(payout.id))
        self.payout = payout


@dataclass
class ExecutionStats:
    by_state: Counter[str] = field(default_factory=Counter)
    lost_races: int = 0
    step_seconds: list[float] = field(default_factory=list)

    def add(self, payout: PayoutRecord, seconds: float) -> None:
        self.by_state[payout.state.value] += 1
        self.step_seconds.append(seconds)


@dataclass
class Executor:
    """Executes payouts for one run. Build one per run; ``execute`` may be called more than once."""

    journal: Journal
    ledger: Ledger
    client: InvestSuiteClient
    run_id: uuid.UUID
    actor: str
    worker: str
    policy: Policy = field(default_factory=Policy)
    concurrency: int = 8
    max_step_attempts: int = 8
    lease_seconds: int = 300
    sleep: Callable[[float], None] = time.sleep
    on_done: Callable[[PayoutRecord], None] | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    #: attempts per (payout, step): (all so far, failed ones in this run); loaded per claimed batch and
    #: counted up locally. An attempt cut off by a crash (intent without outcome) is not a failure: it
    #: makes the next attempt read back first but never counts against ``max_step_attempts``.
    _attempts: dict[tuple[uuid.UUID, str], tuple[int, int]] = field(default_factory=dict, repr=False)

    # -- the loop ----------------------------------------------------------------------------------
    def execute(
        self, *, portfolio_ids: Sequence[str] | None = None, run_scope: uuid.UUID | None = None
    ) -> ExecutionStats:
        """Claim and drive executable payouts until none is left (or a stop is requested)."""
        stats = ExecutionStats()
        # a small queue beyond the threads: claimed payouts wait at most one payout's time, well
        # inside their lease
        batch = self.concurrency + max(1, self.concurrency // 4)
        states = sorted(EXECUTABLE_STATES)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="payout") as pool:
            in_flight: set[Future[tuple[PayoutRecord, float]]] = set()
            exhausted = False
            while True:
                if not exhausted and not self.stop_requested.is_set() and len(in_flight) < batch:
                    claimed = self.journal.claim_payouts(
                        worker=self.worker,
                        limit=batch - len(in_flight),
                        lease_seconds=self.lease_seconds,
                        states=states,
                        portfolio_ids=portfolio_ids,
                        run_id=run_scope,
                        not_stalled_in=self.run_id,
                    )
                    exhausted = not claimed
                    self._attempts.update(self.journal.attempts_by_step([p.id for p in claimed], self.run_id))
                    for payout in claimed:
                        in_flight.add(pool.submit(self._timed_drive, payout))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    payout, seconds = future.result()  # a journal failure propagates: the run fails
                    stats.add(payout, seconds)
                    if self.on_done is not None:
                        self.on_done(payout)
        return stats

    def _timed_drive(self, payout: PayoutRecord) -> tuple[PayoutRecord, float]:
        started = time.monotonic()
        bound = structlog.contextvars.bound_contextvars(
            run_id=str(self.run_id),
            business_date=str(payout.business_date),
            portfolio_id=payout.portfolio_id,
            payout_id=str(payout.id),
        )
        with bound:
            result: PayoutRecord | None = None
            try:
                result = self.drive(payout)
            except InvalidTransitionError as exc:
                log.warning("payout.lost_race", error=str(exc))
                result = self.journal.get_payout(payout.id) or payout
            finally:
                # a completed or stopped payout's lease was cleared with its last state change
                if result is None or result.lease_owner is not None:
                    self.journal.release_lease(payout.id, self.worker)
                for step in Step:
                    self._attempts.pop((payout.id, step.value), None)
        return result, time.monotonic() - started

    def drive(self, payout: PayoutRecord) -> PayoutRecord:
        """Move one payout forward until it completes or stops (NEEDS_ATTENTION / CANCELLED)."""
        steps: dict[PayoutState, Callable[[PayoutRecord, int], PayoutRecord]] = {
            S.PLANNED: self._ledger_post,
            S.LEDGER_POSTED: self._record_transaction,
            S.TRANSACTION_RECORDED: self._update_portfolio,
            S.DIVEST_CLEARED: self._update_portfolio,
            S.HOLDINGS_UPDATED: self._send_event,
            S.EVENT_SENT: self._send_event,
        }
        while payout.state in steps:
            if self.stop_requested.is_set():
                return payout  # graceful stop: the step in flight finished, the rest waits for the next run
            step = _STEP_OF[payout.state]
            try:
                payout = self._with_retries(payout, step, steps[payout.state])
            except _Stop as stop:
                return stop.payout
        return payout

    def _with_retries(
        self, payout: PayoutRecord, step: Step, action: Callable[[PayoutRecord, int], PayoutRecord]
    ) -> PayoutRecord:
        """Run one step; transient failures are retried (reading back first) up to the attempt cap.

        A step that only ever failed transiently (5xx, timeouts, a ledger outage) is not parked for a
        person when the cap is reached: it is *stalled* for this run — left in its state, alerted, and
        resumed by the next run. Permanent refusals stop it for a person (NEEDS_ATTENTION).
        """
        local = 0
        last_error = ""
        while True:
            prior, failed = self._attempts.get((payout.id, step.value), (0, 0))
            # ``local`` also bounds transient failures of reads that record no attempt (the fresh GET)
            if max(failed, local) >= self.max_step_attempts:
                raise _Stop(self._stall(payout, step, max(failed, local), last_error))
            try:
                return action(payout, prior)
            except TransientError as exc:
                local += 1
                last_error = str(exc)[:500]
                delay = min(0.2 * 2 ** (local - 1), 5.0) * (0.5 + random.random())
                if exc.retry_after:
                    delay = max(delay, exc.retry_after)
                log.info("payout.step_retry", step=step.value, attempt=prior + 1, error=str(exc), delay=round(delay, 3))
                self.sleep(delay)
                # the failed attempt recorded its intent (e.g. the holdings base/target cash) on the row:
                # the read-back must compare against that, not against the record we claimed
                payout = self.journal.get_payout(payout.id) or payout

    def _stall(self, payout: PayoutRecord, step: Step, failures: int, error: str) -> PayoutRecord:
        """Leave a payout that only failed transiently for the next run (alerted, never parked)."""
        log.warning("payout.stalled", step=step.value, failures=failures, error=error, state=payout.state.value)
        return self.journal.stall(
            payout, run_id=self.run_id, step=step, actor=self.actor, worker=self.worker, failures=failures, error=error
        )

    # -- helpers -------------------------------------------------------------------------------------
    def _begin(
        self, payout: PayoutRecord, step: Step, intent: Mapping[str, Any], updates: Mapping[str, Any] | None = None
    ) -> int:
        key = (payout.id, step.value)
        total, failed = self._attempts.get(key, (0, 0))
        self._attempts[key] = (total + 1, failed)
        return self.journal.begin_step(
            payout,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            intent=intent,
            payout_updates=updates,
        )

    def _finish(
        self,
        payout: PayoutRecord,
        attempt_id: int,
        step: Step,
        outcome: str,
        detail: Mapping[str, Any],
        through: Sequence[PayoutState] = (),
        updates: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> PayoutRecord:
        return self.journal.finish_step(
            payout,
            attempt_id,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            outcome=outcome,
            detail=detail,
            through=through,
            payout_updates=updates,
            note=note,
        )

    def _transient(self, payout: PayoutRecord, attempt_id: int, step: Step, exc: BatchError) -> None:
        key = (payout.id, step.value)
        total, failed = self._attempts.get(key, (0, 0))
        self._attempts[key] = (total, failed + 1)
        self._finish(payout, attempt_id, step, "TRANSIENT_ERROR", {"error": str(exc)[:500], "type": type(exc).__name__})

    def _attention(
        self,
        payout: PayoutRecord,
        step: Step,
        error: str,
        evidence: Mapping[str, Any] | None = None,
        attempt_id: int | None = None,
    ) -> PayoutRecord:
        log.warning("payout.needs_attention", step=step.value, error=error)
        return self.journal.needs_attention(
            payout,
            run_id=self.run_id,
            step=step,
            actor=self.actor,
            worker=self.worker,
            error=error,
            evidence=evidence,
            attempt_id=attempt_id,
        )

    # -- step 1: ledger ---------------------------------------------------------------------------------
    def _ledger_post(self, payout: PayoutRecord, prior: int) -> PayoutRecord:
        key = str(payout.id)
        step = Step.LEDGER_POST
        if prior > 0:
            # an earlier attempt may have posted (its outcome is unknown): the ledger is the truth, and
            # money that moved is never "re-checked" away
            posted = self.ledger.get_transfer(key)
            if posted is not None:
                attempt = self._begin(payout, step, {"idempotency_key": key, "read_back": True})
                return self._finish(
                    payout,
                    attempt,
                    step,
                    "ADOPTED",
                    {"ledger_reference": posted.reference},
                    through=[S.LEDGER_POSTED],
                    updates={"ledger_reference": posted.reference},
                )
        checked = self._recheck_and_prepare(payout)
        attempt = self._begin(
            payout,
            step,
            {
                "idempotency_key": key,
                "account": mask_account(payout.ledger_account),
                "amount": payout.amount,
                "currency": payout.currency,
                "value_date": payout.business_date,
                "prior_attempts": prior,
                "checked": checked,
            },
        )
        try:
            crash_point("LEDGER_POST.before")
            transfer = self.ledger.post_payout(
                idempotency_key=key,
                account_reference=payout.ledger_account,
                amount=payout.amount,
                currency=payout.currency,
                value_date=payout.business_date,
                counterparty=payout.counter_account,
                description=f"InvestSuite withdrawal {payout.portfolio_id}",
            )
        except InsufficientFundsError as exc:
            detail = {"available": exc.available, "requested": payout.amount}
            log.info("payout.cancelled_balance_changed", **{k: str(v) for k, v in detail.items()})
            raise _Stop(
                self.journal.cancel_before_ledger(
                    payout,
                    run_id=self.run_id,
                    actor=self.actor,
                    worker=self.worker,
                    reason="BALANCE_CHANGED",
                    revise=("DEFER", "BALANCE_CHANGED"),
                    attempt_id=attempt,
                    detail=detail,
                )
            ) from exc
        except TransientError as exc:
            self._transient(payout, attempt, step, exc)
            raise
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except BatchError as exc:
            raise _Stop(self._attention(payout, step, f"ledger refused: {exc}", attempt_id=attempt)) from exc
        crash_point("LEDGER_POST.after")
        return self._finish(
            payout,
            attempt,
            step,
            "OK",
            {"ledger_reference": transfer.reference},
            through=[S.LEDGER_POSTED],
            updates={"ledger_reference": transfer.reference},
        )

    def _recheck_and_prepare(self, payout: PayoutRecord) -> dict[str, Any]:
        """The fresh read right before money moves (DESIGN §9.2-3); stops the payout if it must not be paid.

        Returns what was checked (for the intent). Raises _Stop with the payout CANCELLED when the
        portfolio changed since planning (decided afresh by the next planning) or when one of its writes
        would be refused (HOLD INVALID_REMOTE_DATA: a person must look; no money moved).
        """
        try:
            remote: RemotePortfolio | None = self.client.get_portfolio(payout.portfolio_id)
        except NotFoundError:
            remote = None
        except TransientError:
            raise
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except BatchError as exc:  # a body that is not a portfolio: nothing can be written from it
            raise _Stop(
                self._cancel(payout, Decision.HOLD, Reason.INVALID_REMOTE_DATA, str(exc), {"read": "GET"})
            ) from exc
        view = None if remote is None else remote.to_view(payout.counter_account)
        change = recheck(payout, view, self.policy)
        if change is not None:
            log.info("payout.changed_since_planning", what=change.what)
            raise _Stop(self._cancel(payout, change.decision, change.reason, change.what, change.evidence))
        assert remote is not None and view is not None
        try:
            prepared = writes.prepare_withdrawal(
                portfolio_id=payout.portfolio_id,
                currency=payout.currency,
                amount=payout.amount,
                full_withdrawal=payout.full_withdrawal,
                divest_planned=payout.divest_snapshot,
                divest_now=view.divest_raw,
                config=remote.config,
                holdings=remote.portfolio,
                when=datetime.now(UTC),
            )
        except InvalidRemoteDataError as exc:
            log.warning("payout.invalid_remote_data", field=exc.field, problem=exc.problem)
            evidence = {"field": exc.field, "problem": exc.problem, "version": remote.version}
            raise _Stop(self._cancel(payout, Decision.HOLD, Reason.INVALID_REMOTE_DATA, str(exc), evidence)) from exc
        return {
            "version": remote.version,
            "divest_now": str(view.divest_raw),
            "investsuite_cash": prepared.base_cash,
            "writes_valid": True,
        }

    def _cancel(
        self, payout: PayoutRecord, decision: Decision, reason: Reason, what: str, evidence: Mapping[str, Any]
    ) -> PayoutRecord:
        return self.journal.cancel_before_ledger(
            payout,
            run_id=self.run_id,
            actor=self.actor,
            worker=self.worker,
            reason=reason.value,
            revise=(decision.value, reason.value),
            detail={"what": what, **evidence},
            note=f"not paid: {what}",
        )

    # -- step 2: InvestSuite transaction -------------------------------------------------------------------
    def _transaction_body(self, payout: PayoutRecord) -> dict[str, Any]:
        assert payout.ledger_reference is not None
        posted = payout.ledger_posted_at or datetime.combine(payout.business_date, dtime(0), UTC)
        return writes.transaction_body(payout.ledger_reference, payout.currency, payout.amount, posted)

    def _check_adopted(self, payout: PayoutRecord, tx: RemoteTransaction) -> str | None:
        """Why an existing transaction with our external_id is not the one we meant (None if it is)."""
        if len(tx.movements) != 1:
            return f"transaction {tx.id} has {len(tx.movements)} movements"
        movement = tx.movements[0]
        try:
            quantity = parse_amount(movement.get("quantity"))
        except InvalidAmountError:
            return f"transaction {tx.id} has an unreadable quantity"
        if quantity != -payout.amount or movement.get("instrument_id") != f"${payout.currency}":
            return f"transaction {tx.id} books {quantity} {movement.get('instrument_id')}, expected -{payout.amount}"
        return None

    def _record_transaction(self, payout: PayoutRecord, prior: int) -> PayoutRecord:
        step = Step.RECORD_TRANSACTION
        assert payout.ledger_reference is not None
        attempt = self._begin(payout, step, {"external_id": payout.ledger_reference, "read_back": prior > 0})
        try:
            crash_point("RECORD_TRANSACTION.before")
            if prior > 0:
                found = self.client.find_transactions(payout.portfolio_id, payout.ledger_reference)
                if len(found) > 1:
                    raise _Stop(
                        self._attention(
                            payout,
                            step,
                            f"{len(found)} InvestSuite transactions carry external_id {payout.ledger_reference}",
                            {"transaction_ids": [t.id for t in found]},
                            attempt,
                        )
                    )
                if found:
                    problem = self._check_adopted(payout, found[0])
                    if problem:
                        raise _Stop(self._attention(payout, step, problem, {"transaction_id": found[0].id}, attempt))
                    return self._finish(
                        payout,
                        attempt,
                        step,
                        "ADOPTED",
                        {"transaction_id": found[0].id},
                        through=[S.TRANSACTION_RECORDED],
                        updates={"transaction_id": found[0].id},
                    )
            tx = self.client.create_transaction(payout.portfolio_id, self._transaction_body(payout))
        except InvalidRemoteDataError as exc:
            raise _Stop(self._attention(payout, step, f"transaction not writable: {exc}", attempt_id=attempt)) from exc
        except TransientError as exc:
            self._transient(payout, attempt, step, exc)
            raise
        except NotFoundError as exc:
            raise _Stop(
                self._attention(
                    payout, step, "portfolio disappeared after the ledger payout", {"status": exc.status}, attempt
                )
            ) from exc
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except BatchError as exc:
            raise _Stop(
                self._attention(payout, step, f"InvestSuite refused the transaction: {exc}", attempt_id=attempt)
            ) from exc
        crash_point("RECORD_TRANSACTION.after")
        return self._finish(
            payout,
            attempt,
            step,
            "OK",
            {"transaction_id": tx.id},
            through=[S.TRANSACTION_RECORDED],
            updates={"transaction_id": tx.id},
        )

    # -- step 3: divest cleared and holdings updated, one PATCH -------------------------------------------
    def _update_portfolio(self, payout: PayoutRecord, prior: int) -> PayoutRecord:
        step = Step.UPDATE_PORTFOLIO
        try:
            remote = self.client.get_portfolio(payout.portfolio_id)
        except NotFoundError as exc:
            raise _Stop(
                self._attention(payout, step, "portfolio disappeared after the ledger payout", {"status": exc.status})
            ) from exc
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except BatchError as exc:
            if isinstance(exc, TransientError):
                raise
            raise _Stop(self._attention(payout, step, f"cannot read the portfolio back: {exc}")) from exc
        view = remote.to_view(None)
        cash_key = f"${payout.currency}"
        if view.holdings_error:
            raise _Stop(self._attention(payout, step, f"holdings unreadable: {view.holdings_error}"))
        cash_now = view.holdings.get(cash_key, Decimal(0))
        divest_now = view.divest_raw
        evidence: dict[str, Any] = {"cash_now": cash_now, "divest_now": str(divest_now), "version": remote.version}
        through = (
            [S.DIVEST_CLEARED, S.HOLDINGS_UPDATED] if payout.state is S.TRANSACTION_RECORDED else [S.HOLDINGS_UPDATED]
        )

        if prior > 0 and payout.holdings_target_cash is not None and payout.holdings_base_cash is not None:
            # an earlier attempt recorded its absolute target: reuse it, never recompute it (DESIGN §9.1)
            base, target = payout.holdings_base_cash, payout.holdings_target_cash
            evidence |= {"base_cash": base, "target_cash": target}
            if cash_now == target:
                attempt = self._begin(payout, step, {"read_back": True, **evidence})
                return self._finish(payout, attempt, step, "ADOPTED", evidence, through=through)
            if cash_now != base:
                # the read-back is an attempt too: its evidence goes into step_attempts, not only the audit log
                attempt = self._begin(payout, step, {"read_back": True, **evidence})
                raise _Stop(
                    self._attention(
                        payout,
                        step,
                        "holdings cash is neither the base nor the target after an unknown outcome",
                        evidence,
                        attempt,
                    )
                )
        else:
            base = cash_now
            target = base - payout.amount
            if base != payout.cash_snapshot:
                evidence["cash_moved_since_planning"] = {"snapshot": payout.cash_snapshot, "now": base}
            if target < 0:
                raise _Stop(self._attention(payout, step, "holdings cash is below the amount paid", evidence))
        divest_target = writes.divest_after_payout(
            divest_now, payout.divest_snapshot, payout.amount, payout.full_withdrawal, payout.currency
        )
        if divest_target:
            evidence["divest_changed_since_planning"] = {"snapshot": payout.divest_snapshot, "now": str(divest_now)}
        try:
            # built afresh from this read, every attempt: a refused body is never sent again as it was
            body = writes.patch_body(remote.config, remote.portfolio, payout.currency, target, divest_target)
        except InvalidRemoteDataError as exc:
            evidence |= {"field": exc.field, "problem": exc.problem}
            raise _Stop(self._attention(payout, step, f"portfolio update not writable: {exc}", evidence)) from exc
        attempt = self._begin(
            payout,
            step,
            {
                "base_cash": base,
                "target_cash": target,
                "divest_target": divest_target,
                "read_back": prior > 0,
                **evidence,
            },
            updates={
                "holdings_base_cash": base,
                "holdings_target_cash": target,
                "divest_target": format(divest_target, "f"),
            },
        )
        try:
            crash_point("UPDATE_PORTFOLIO.before")
            patched = self.client.patch_portfolio(payout.portfolio_id, body)
        except TransientError as exc:
            self._transient(payout, attempt, step, exc)
            raise
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except BatchError as exc:
            raise _Stop(
                self._attention(payout, step, f"InvestSuite refused the portfolio update: {exc}", evidence, attempt)
            ) from exc
        crash_point("UPDATE_PORTFOLIO.after")
        if remote.version is not None and patched.version is not None and patched.version != remote.version + 1:
            # no precondition exists in the API: say so when someone else wrote between our read and our PATCH
            evidence["concurrent_write"] = {"read_version": remote.version, "patched_version": patched.version}
        return self._finish(payout, attempt, step, "OK", evidence, through=through, note=_execution_note(evidence))

    # -- step 4: withdraw event --------------------------------------------------------------------------------
    def _send_event(self, payout: PayoutRecord, prior: int) -> PayoutRecord:
        step = Step.SEND_EVENT
        try:
            body = writes.event_body(payout.portfolio_id, payout.currency, payout.amount)
        except InvalidRemoteDataError as exc:
            raise _Stop(self._attention(payout, step, f"event not writable: {exc}")) from exc
        attempt = self._begin(
            payout,
            step,
            {"idempotency_key": str(payout.id), **body["data"], "replay": prior > 0},
        )
        try:
            crash_point("SEND_EVENT.before")
            receipt = self.client.post_event("withdraw", idempotency_key=str(payout.id), body=body)
        except TransientError as exc:
            self._transient(payout, attempt, step, exc)
            raise
        except RemotePermanentError as exc:
            why = "event key reused with a different body" if exc.status == 409 else f"event refused: {exc}"
            raise _Stop(self._attention(payout, step, why, {"status": exc.status}, attempt)) from exc
        except ConfigError:
            raise  # refused credentials, a missing clearing account: the whole run stops (exit 2)
        except BatchError as exc:
            raise _Stop(self._attention(payout, step, f"event failed: {exc}", attempt_id=attempt)) from exc
        crash_point("SEND_EVENT.after")
        through = [S.EVENT_SENT, S.COMPLETED] if payout.state is S.HOLDINGS_UPDATED else [S.COMPLETED]
        return self._finish(
            payout,
            attempt,
            step,
            "OK",
            {"status": receipt.status_code, "event_id": receipt.event_id},
            through=through,
            updates={"event_status": receipt.status_code},
        )


def _execution_note(evidence: Mapping[str, Any]) -> str | None:
    """What changed on InvestSuite's side between planning and paying, for the report."""
    notes = []
    if "divest_changed_since_planning" in evidence:
        changed = evidence["divest_changed_since_planning"]
        notes.append(f"divest changed since planning ({changed['snapshot']} -> {changed['now']}): kept the unpaid rest")
    if "cash_moved_since_planning" in evidence:
        moved = evidence["cash_moved_since_planning"]
        notes.append(f"holdings cash moved since planning ({moved['snapshot']} -> {moved['now']})")
    if "concurrent_write" in evidence:
        seen = evidence["concurrent_write"]
        notes.append(
            f"portfolio written by someone else between our read and our PATCH "
            f"(version {seen['read_version']} -> {seen['patched_version']})"
        )
    return "; ".join(notes) or None


_STEP_OF: dict[PayoutState, Step] = {
    S.PLANNED: Step.LEDGER_POST,
    S.LEDGER_POSTED: Step.RECORD_TRANSACTION,
    S.TRANSACTION_RECORDED: Step.UPDATE_PORTFOLIO,
    S.DIVEST_CLEARED: Step.UPDATE_PORTFOLIO,
    S.HOLDINGS_UPDATED: Step.SEND_EVENT,
    S.EVENT_SENT: Step.SEND_EVENT,
}
