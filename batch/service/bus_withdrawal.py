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
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

import structlog

from batch import __version__
from batch.adapters.journal.bus import BusStore, DecisionSummary
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import PayoutRecord
from batch.service.audit_checks import refuse_while_stopped
from batch.service.context import Services
from batch.service.run import business_today, engine_for, planner_for

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
    def run_for(self, portfolio_id: str) -> Iterator[tuple[uuid.UUID, date]]:
        """The run to plan ``portfolio_id`` under now (a fresh one if it was decided in the current run)."""
        today = business_today(self.app.settings.run.timezone)
        with self._lock:
            if self._current is None or today != self._date or portfolio_id in self._decided:
                if self._current is not None:
                    self._retired.add(self._current)
                    if not self._users[self._current]:
                        self._retire(self._current)
                self._current, self._date, self._decided = self._start(today), today, set()
            run_id = self._current
            self._decided.add(portfolio_id)
            self._users[run_id] += 1
            self.events[run_id] += 1
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
class PlanAndExecute:
    """``WithdrawalTrigger`` on the nightly planner and the step engine (single portfolio, no run lock)."""

    app: Services
    store: BusStore
    runs: ListenerRuns
    actor: str = "listener"

    def trigger(self, portfolio_id: str, event_id: str) -> str:
        seen_cancelled: set[uuid.UUID] = set()
        outcome = ""
        for _round in range(ROUNDS):
            decision, latest, run_id = self._round(portfolio_id)
            outcome = describe(decision, latest)
            # the payout this round planned, or the one it deferred to, was cancelled meanwhile (the fresh read
            # before the ledger post found the request lowered or the balance short): decide again
            replan = (
                decision is not None
                and latest is not None
                and latest.state is PayoutState.CANCELLED
                and latest.id not in seen_cancelled
                and (latest.id == decision.payout_id or decision.reason == "PAYOUT_IN_PROGRESS")
            )
            if not replan:
                break
            assert latest is not None
            seen_cancelled.add(latest.id)
            log.info("listener.replan", portfolio_id=portfolio_id, cancelled=str(latest.id), run_id=str(run_id))
        return outcome

    def _round(self, portfolio_id: str) -> tuple[DecisionSummary | None, PayoutRecord | None, uuid.UUID]:
        refuse_while_stopped(self.app)  # no money moves past a failed full verification of the audit chain
        with self.runs.run_for(portfolio_id) as (run_id, business_date):
            planner_for(self.app, run_id, business_date, dry_run=False, actor=self.actor).plan([portfolio_id])
            engine = engine_for(
                self.app, run_id, actor=self.actor, worker=self.runs.worker, flows=[FlowKind.WITHDRAWAL]
            )
            engine.execute(portfolio_ids=[portfolio_id])
            return self.store.decision_in_run(run_id, portfolio_id), self.store.latest_payout(portfolio_id), run_id


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
