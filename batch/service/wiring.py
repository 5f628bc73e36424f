"""The step engine and the withdrawal planner for one run, wired from the services and the settings.

The nightly run, its scale-out workers and the bus listener build them the same way.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import date

from batch.domain.payout import FlowKind
from batch.domain.records import PayoutRecord
from batch.service.context import Services
from batch.service.engine.steps import Engine, ExecutionStats
from batch.service.planning.withdrawals import Planner, PlanStats


def planner_for(
    app: Services,
    run_id: uuid.UUID,
    business_date: date,
    *,
    dry_run: bool,
    actor: str,
    on_page: Callable[[PlanStats], None] | None = None,
) -> Planner:
    """The withdrawal planner for one run, with the configured policy and account mapping."""
    return Planner(
        journal=app.journal,
        ledger=app.ledger,
        client=app.client,
        policy=app.settings.policy.to_policy(),
        accounts=app.settings.policy.account_map(),
        run_id=run_id,
        business_date=business_date,
        dry_run=dry_run,
        actor=actor,
        on_page=on_page,
    )


def engine_for(
    app: Services,
    run_id: uuid.UUID,
    *,
    actor: str,
    worker: str,
    flows: Sequence[FlowKind] | None = None,
    stop: threading.Event | None = None,
    on_done: Callable[[PayoutRecord], None] | None = None,
) -> Engine:
    """The step engine for one run (or one worker of it), over the flows asked for (default: all)."""
    settings = app.settings.run
    wanted = {kind: flow for kind, flow in app.flows.items() if flows is None or kind in flows}
    engine = Engine(
        journal=app.journal,
        ports=app.ports,
        flows=wanted,
        run_id=run_id,
        actor=actor,
        worker=worker,
        concurrency=settings.concurrency,
        max_step_attempts=settings.max_step_attempts,
        lease_seconds=settings.lease_seconds,
        on_done=on_done,
    )
    if stop is not None:
        engine.stop_requested = stop
    return engine


def run_worker(
    app: Services, run_id: uuid.UUID, *, actor: str, worker_name: str, stop: threading.Event | None = None
) -> ExecutionStats:
    """One scale-out worker: claim and drive operations of ``run_id`` until none is left."""
    return engine_for(app, run_id, actor=actor, worker=worker_name, stop=stop).execute()
