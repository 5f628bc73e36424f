"""``DepositTrigger`` on the deposit flow: a funding event places the ledger's new incoming credits now.

Deposits are found in the ledger, set-wise (``batch.service.planning.deposits``), not per portfolio: a
``portfolio.funding`` event is the signal that money may have arrived, so the listener runs the same
deposit pass the nightly run makes — new credits since the last position, and every credit still held —
under its own run, then drives the deposit operations with the step engine. The nightly run stays the
safety net; a credit decided by both is placed once (one live operation per credit).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import structlog

from batch.domain.business_date import business_today
from batch.domain.payout import FlowKind
from batch.service.bus.withdrawal import ListenerRuns
from batch.service.context import Services
from batch.service.planning.deposits import plan_deposits
from batch.service.wiring import engine_for

log = structlog.get_logger("batch.listener")
DEPOSIT_FLOWS = (FlowKind.DEPOSIT, FlowKind.DEPOSIT_ANNOUNCE)


@dataclass
class DepositCheck:
    app: Services
    runs: ListenerRuns
    actor: str = "listener"
    #: one deposit pass at a time in this process (a burst of funding events needs one pass, not many)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def trigger(self, portfolio_id: str, event_id: str) -> str:
        if not self.app.settings.deposits.enabled:
            return "deposits are disabled ([deposits] enabled = false)"
        with self._lock, self.runs.using() as run_id:
            business_date = business_today(self.app.settings.run.timezone)
            stats = plan_deposits(self.app, run_id, business_date, dry_run=False, actor=self.actor)
            done = engine_for(
                self.app, run_id, actor=self.actor, worker=self.runs.worker, flows=list(DEPOSIT_FLOWS)
            ).execute()
        log.info("listener.deposit_check", portfolio_id=portfolio_id, event_id=event_id, credits=stats.credits)
        decided = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_decision.items())) or "none new"
        return f"deposit check: {stats.credits} credit(s) decided ({decided}); operations {dict(done.by_state)}"
