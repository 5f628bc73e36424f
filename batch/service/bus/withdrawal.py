"""The withdrawal trigger that works on today's code: plan this one portfolio, then execute its payout.

A withdrawal event is only a trigger: the planner reads the portfolio afresh (``GET``), decides with the
same policy as the nightly run and records the decision; the step engine then drives the portfolio's
open payout (this one, or one the nightly run planned and nobody holds) through the withdrawal flow's
steps, with the same journal, ledger and InvestSuite evidence. Insufficient cash is a DEFER as in the batch flow; a
portfolio that already has an open payout gets DEFER ``PAYOUT_IN_PROGRESS`` (the one-open-payout index
decides, whoever planned first). A payout cancelled because the portfolio changed since planning (a
lowered amount) is planned again, up to three rounds.

No nightly run lock is taken: the listener and a nightly run work side by side. The listener's decisions
and payouts belong to long-lived ``listener`` run rows (``ListenerRuns``).

Bursts are handled as bursts (issue 24): withdrawal events that arrive together are planned together.
The first trigger of a batch waits ``window`` (20 ms) for others (a burst's deliveries arrive together)
or until ``max_batch`` have joined; then the batch is planned as one: one listing of them (``id in
[...]``, owners embedded), one ledger read for the page, the decisions recorded set-wise, then one
step-engine pass over their payouts; every trigger gets its own portfolio's outcome. Batches run side
by side (bounded by the handler threads): a paced event costs the window, never a wait for another
batch's payments.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

import structlog

from batch import __version__
from batch.adapters.journal.bus import BusStore, DecisionSummary
from batch.domain.business_date import business_today
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import PayoutRecord
from batch.service.audit_checks import refuse_while_stopped
from batch.service.context import Services
from batch.service.wiring import engine_for, planner_for

log = structlog.get_logger("batch.bus")
ROUNDS = 3


@dataclass
class ListenerRuns:
    """The run rows a listener records its decisions and payouts under.

    One current run per process. ``batch.decisions`` keeps one decision per portfolio per run, so a
    portfolio coming back (a second request) or a new business date starts a fresh run; the old one is
    finished once the events still using it are done. A listener that dies leaves its runs RUNNING:
    the next listener marks them ABANDONED (its instance lock is free) and releases their leases.
    """

    app: Services
    bus: str
    instance: str
    worker: str
    actor: str = "listener"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _current: uuid.UUID | None = None
    _date: date | None = None
    _decided: set[str] = field(default_factory=set, repr=False)
    _users: Counter[uuid.UUID] = field(default_factory=Counter, repr=False)
    _retired: set[uuid.UUID] = field(default_factory=set, repr=False)
    events: Counter[uuid.UUID] = field(default_factory=Counter, repr=False)

    @property
    def current(self) -> uuid.UUID | None:
        return self._current

    def _start(self, business_date: date) -> uuid.UUID:
        run_id = uuid.uuid4()
        self.app.journal.start_run(
            run_id=run_id,
            business_date=business_date,
            trigger="listener",
            operator=self.actor,
            dry_run=False,
            parameters={"role": "listener", "bus": self.bus, "instance": self.instance, "worker": self.worker},
            software_version=__version__,
            config_digest=self.app.settings.digest(),
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        log.info("listener.run_started", run_id=str(run_id), business_date=str(business_date))
        return run_id

    def _finish(self, run_id: uuid.UUID) -> None:
        self.app.journal.finish_run(
            run_id,
            status="SUCCEEDED",
            exit_code=0,
            summary={"events": self.events.pop(run_id, 0)},
            error=None,
            actor=self.actor,
        )

    @contextmanager
    def run_for(self, portfolio_ids: Sequence[str]) -> Iterator[tuple[uuid.UUID, date]]:
        """The run to plan ``portfolio_ids`` under now (a fresh one if one of them was decided in the current run)."""
        today = business_today(self.app.settings.run.timezone)
        with self._lock:
            if self._current is None or today != self._date or not self._decided.isdisjoint(portfolio_ids):
                if self._current is not None:
                    self._retired.add(self._current)
                    if not self._users[self._current]:
                        self._retire(self._current)
                self._current, self._date, self._decided = self._start(today), today, set()
            run_id = self._current
            self._decided.update(portfolio_ids)
            self._users[run_id] += 1
            self.events[run_id] += len(portfolio_ids)
        try:
            yield run_id, today
        finally:
            with self._lock:
                self._users[run_id] -= 1
                if run_id in self._retired and not self._users[run_id]:
                    self._retire(run_id)

    @contextmanager
    def using(self) -> Iterator[uuid.UUID]:
        """The current run (one is started if there is none), held for work on no particular portfolio."""
        today = business_today(self.app.settings.run.timezone)
        with self._lock:
            if self._current is None:
                self._current, self._date, self._decided = self._start(today), today, set()
            run_id = self._current
            self._users[run_id] += 1
        try:
            yield run_id
        finally:
            with self._lock:
                self._users[run_id] -= 1
                if run_id in self._retired and not self._users[run_id]:
                    self._retire(run_id)

    def _retire(self, run_id: uuid.UUID) -> None:
        self._retired.discard(run_id)
        self._users.pop(run_id, None)
        self._finish(run_id)

    def close(self) -> None:
        """Finish every run of this listener (at shutdown, after the events in flight are done)."""
        with self._lock:
            for run_id in [*self._retired, *([self._current] if self._current else [])]:
                self._finish(run_id)
            self._retired.clear()
            self._current = None


@dataclass
class _Ticket:
    """One trigger waiting for its portfolio's outcome in a batch."""

    portfolio_id: str
    taken: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""
    error: Exception | None = None


@dataclass
class PlanAndExecute:
    """``WithdrawalTrigger`` on the nightly planner and the step engine (no run lock), batching bursts."""

    app: Services
    store: BusStore
    runs: ListenerRuns
    actor: str = "listener"
    #: portfolios planned together at most (one listing page)
    max_batch: int = 100
    #: how long the first event of a batch waits for others to join (bus deliveries of a burst arrive together)
    window: float = 0.02
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _gathering: list[_Ticket] | None = field(default=None, repr=False)
    #: sizes of the batches run so far (tests, logs)
    batch_sizes: list[int] = field(default_factory=list, repr=False)

    def trigger(self, portfolio_id: str, event_id: str) -> str:
        ticket = _Ticket(portfolio_id)
        with self._cond:
            leader = self._gathering is None or len(self._gathering) >= self.max_batch
            if leader:
                batch = self._gathering = [ticket]
            else:
                assert self._gathering is not None
                self._gathering.append(ticket)
                self._cond.notify_all()
        if leader:
            deadline = time.monotonic() + self.window
            with self._cond:
                while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._gathering is batch:
                    self._gathering = None
            self._run_batch(batch)
        ticket.done.wait()
        if ticket.error is not None:
            raise ticket.error
        return ticket.outcome

    def _run_batch(self, batch: list[_Ticket]) -> None:
        """Plan and pay the batch; if it fails as a whole, each portfolio alone (one cannot fail the others)."""
        self.batch_sizes.append(len(batch))
        started = time.monotonic()
        try:
            self._rounds(batch)
            if len(batch) > 1:
                log.info("listener.batch", portfolios=len(batch), seconds=round(time.monotonic() - started, 3))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.warning("listener.batch_failed", portfolios=len(batch), error=f"{type(exc).__name__}: {exc}"[:500])
                for ticket in batch:
                    try:
                        self._rounds([ticket])
                    except Exception as alone:  # this trigger fails (and is retried by its handler)
                        ticket.error = alone
        finally:
            for ticket in batch:
                ticket.done.set()

    def _rounds(self, batch: list[_Ticket]) -> None:
        tickets = {t.portfolio_id: t for t in batch}
        seen_cancelled: set[uuid.UUID] = set()
        todo = list(tickets)
        for _round in range(ROUNDS):
            again: list[str] = []
            for portfolio_id, (decision, latest, run_id) in self._round(todo).items():
                tickets[portfolio_id].outcome = describe(decision, latest)
                # the payout this round planned, or the one it deferred to, was cancelled meanwhile (the fresh
                # read before the ledger post found the request lowered or the balance short): decide again
                if (
                    decision is not None
                    and latest is not None
                    and latest.state is PayoutState.CANCELLED
                    and latest.id not in seen_cancelled
                    and (latest.id == decision.payout_id or decision.reason == "PAYOUT_IN_PROGRESS")
                ):
                    seen_cancelled.add(latest.id)
                    again.append(portfolio_id)
                    log.info("listener.replan", portfolio_id=portfolio_id, cancelled=str(latest.id), run_id=str(run_id))
            if not again:
                return
            todo = again

    def _round(
        self, portfolio_ids: list[str]
    ) -> dict[str, tuple[DecisionSummary | None, PayoutRecord | None, uuid.UUID]]:
        refuse_while_stopped(self.app)  # no money moves past a failed full verification of the audit chain
        with self.runs.run_for(portfolio_ids) as (run_id, business_date):
            started = time.monotonic()
            planner_for(self.app, run_id, business_date, dry_run=False, actor=self.actor).plan(portfolio_ids)
            if len(portfolio_ids) > 1:
                log.info(
                    "listener.batch_planned",
                    portfolios=len(portfolio_ids),
                    seconds=round(time.monotonic() - started, 3),
                )
            engine = engine_for(
                self.app, run_id, actor=self.actor, worker=self.runs.worker, flows=[FlowKind.WITHDRAWAL]
            )
            engine.execute(portfolio_ids=portfolio_ids)
            return {
                pid: (self.store.decision_in_run(run_id, pid), self.store.latest_payout(pid), run_id)
                for pid in portfolio_ids
            }


@dataclass
class AbandonedRuns:
    """Finishes what dead listeners left: their runs are marked ABANDONED, their payouts driven on here.

    A listener killed mid-payout leaves the payout leased (released here at once) and its message
    unacknowledged; when another listener (a competing consumer on the same queue) took the redelivered
    message before the leases were released, the message was settled as DEFER PAYOUT_IN_PROGRESS and
    nothing would drive the payout until the nightly run. Every listener runs this at start and then
    every few seconds (``batch listen``), so such payouts complete within seconds.
    """

    app: Services
    store: BusStore
    runs: ListenerRuns
    actor: str = "listener"

    def sweep(self) -> int:
        """Abandon dead listeners' runs and drive their open payouts; returns how many payouts were driven."""
        abandoned, released = self.store.abandon_dead_listeners(self.actor, self.runs.instance)
        if not abandoned:
            return 0
        refuse_while_stopped(self.app)
        log.warning("listener.abandoned_marked", runs=[str(r) for r in abandoned])
        driven = 0
        with self.runs.using() as run_id:
            executor = engine_for(
                self.app, run_id, actor=self.actor, worker=self.runs.worker, flows=[FlowKind.WITHDRAWAL]
            )
            if released:  # the payouts it held, whoever planned them
                driven += sum(executor.execute(portfolio_ids=released).by_state.values())
            for dead in abandoned:  # and those it planned without getting to them
                driven += sum(executor.execute(run_scope=dead).by_state.values())
        log.info("listener.abandoned_resumed", payouts=driven)
        return driven


def describe(decision: DecisionSummary | None, latest: PayoutRecord | None) -> str:
    """One line for the inbox: the decision, and where the portfolio's latest payout stands."""
    if decision is None:
        return "no decision recorded"
    text = f"{decision.decision} {decision.reason}"
    if decision.final_decision:
        text += f" -> {decision.final_decision} {decision.final_reason}"
    if latest is not None and (decision.payout_id == latest.id or decision.reason == "PAYOUT_IN_PROGRESS"):
        text += f"; payout {latest.id} {latest.amount} {latest.currency} {latest.state}"
    if decision.note:
        text += f" ({decision.note[:200]})"
    return text
