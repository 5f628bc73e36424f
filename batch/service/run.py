"""One nightly run: lock, resume open payouts, plan, execute, report. Called by the CLI and the scheduler.

Exit codes (for cron and Kubernetes podFailurePolicy):
    0   done
    3   done, but something needs a person: a new hold, a payout that needs attention (of any run), a
        payout still in progress, a reconciliation break; a hold unchanged since the previous run
        ("still held") only with ``[run] alert_on_unchanged_holds = true``
    1   technical failure (the run is recorded as FAILED)
    2   usage or configuration error
    75  another run holds the lock (nothing was done)
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import IntEnum
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from batch import __version__
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import PayoutRecord
from batch.errors import AuditChainBrokenError, BatchError, ConfigError, RunLockedError
from batch.service.announcements import AnnouncementStats, plan_announcements
from batch.service.context import Services
from batch.service.deposits import DepositStats, plan_deposits
from batch.service.engine import Engine, ExecutionStats
from batch.service.plan import Planner, PlanStats
from batch.service.progress import Progress
from batch.service.reconciling import Reconciliation, reconcile_payouts
from batch.service.report import Report, audit_summary, build_report, run_header, write_reports
from batch.service.report_model import checks
from batch.settings import BrokerIntegration

log = structlog.get_logger("batch.run")


class ExitCode(IntEnum):
    OK = 0
    TECHNICAL_FAILURE = 1
    USAGE = 2
    ATTENTION = 3
    LOCKED = 75


@dataclass(frozen=True)
class RunRequest:
    business_date: date | None = None
    portfolio_ids: tuple[str, ...] = ()
    dry_run: bool = False
    trigger: str = "manual"
    operator: str = field(default_factory=lambda: os.environ.get("BATCH_OPERATOR") or os.environ.get("USER") or "batch")
    #: processes executing payouts, the planner included (None: ``[run] workers``)
    workers: int | None = None
    #: which flows this run plans and drives: "withdrawals", "deposits" (default: both, deposits when enabled)
    flows: tuple[str, ...] = ()
    #: why a date before the journal's first business date is run (recorded with the run's parameters)
    backfill_reason: str | None = None


class WorkerGroup(Protocol):
    """Worker processes a planner started (``batch.entrypoints.workers.LocalWorkers``)."""

    def wait(self) -> list[int]: ...


@dataclass
class RunResult:
    run_id: uuid.UUID | None
    business_date: date
    exit_code: ExitCode
    status: str
    report: Report | None = None
    report_paths: dict[str, Path] = field(default_factory=dict)
    error: str | None = None
    plan: PlanStats | None = None
    execution: list[ExecutionStats] = field(default_factory=list)
    #: payouts this run stalled after transient failures only; the next run resumes them
    stalled: int = 0
    deposits: DepositStats | None = None
    #: withdrawals with broker integration by InvestSuite: the bank's payouts decided for announcement
    announcements: AnnouncementStats | None = None
    reconciliation: Reconciliation | None = None
    reconcile_error: str | None = None


def business_today(timezone: str, now: Callable[[], datetime] | None = None) -> date:
    """Today in the configured time zone (the default business date)."""
    moment = now() if now is not None else datetime.now(ZoneInfo(timezone))
    return moment.astimezone(ZoneInfo(timezone)).date()


def run_job(
    app: Services,
    request: RunRequest,
    *,
    stop: threading.Event | None = None,
    spawn_workers: Callable[[uuid.UUID, int, Mapping[str, str]], WorkerGroup] | None = None,
    check: Callable[[], None] | None = None,
) -> RunResult:
    """The nightly job. Never raises for a run that started: failures become exit code 1 and a FAILED run.

    ``check`` (the CLI's input checks) runs under the run lock before the run is recorded: what it
    raises (a UsageError) leaves no run behind, and no concurrent run can move the journal's first date.
    """
    settings = app.settings
    business_date = request.business_date or business_today(settings.run.timezone)
    journal = app.journal
    actor = request.operator
    try:
        with journal.run_lock():
            if check is not None:
                check()
            return _locked_run(app, request, business_date, stop, spawn_workers)
    except RunLockedError:
        journal.audit(
            actor=actor,
            action="run.refused",
            details={
                "business_date": business_date,
                "reason": "another run holds the lock",
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        log.warning("run.refused_locked", business_date=str(business_date))
        return RunResult(None, business_date, ExitCode.LOCKED, "REFUSED", error="another run holds the lock")


def run_flows(app: Services, request: RunRequest) -> frozenset[FlowKind]:
    """The flows a run plans and drives: what ``--flow`` asks, else withdrawals and (when enabled) deposits.

    ``--portfolio`` re-runs are about withdrawals unless deposits are asked for explicitly.
    """
    asked = set(request.flows) or {"withdrawals"} | (
        {"deposits"} if app.settings.deposits.enabled and not request.portfolio_ids else set()
    )
    flows: set[FlowKind] = set()
    if "withdrawals" in asked:  # pay them (broker integration by the client) or announce the bank's payouts
        by_investsuite = app.settings.withdrawals.broker_integration is BrokerIntegration.INVESTSUITE
        flows.add(FlowKind.WITHDRAWAL_ANNOUNCE if by_investsuite else FlowKind.WITHDRAWAL)
    if "deposits" in asked:
        flows |= {FlowKind.DEPOSIT, FlowKind.DEPOSIT_ANNOUNCE}
    return frozenset(flows)


def _locked_run(
    app: Services,
    request: RunRequest,
    business_date: date,
    stop: threading.Event | None,
    spawn_workers: Callable[[uuid.UUID, int, Mapping[str, str]], WorkerGroup] | None,
) -> RunResult:
    settings = app.settings
    journal, actor = app.journal, request.operator
    abandoned = journal.abandon_stale_runs(actor)
    if abandoned:
        log.warning("run.abandoned_marked", runs=[str(r) for r in abandoned])
    run_id = uuid.uuid4()
    # processes executing payouts, the planner included (more only when the caller can start workers)
    can_spawn = spawn_workers is not None and not request.dry_run
    processes = (request.workers or settings.run.worker_processes()) if can_spawn else 1
    flows = run_flows(app, request)
    parameters = {
        "flows": sorted(flows),
        "portfolio_ids": list(request.portfolio_ids),
        "dry_run": request.dry_run,
        "workers": processes,
        "concurrency": settings.run.concurrency,
        "role": "planner",
    } | ({"backfill_reason": request.backfill_reason.strip()} if request.backfill_reason else {})
    journal.start_run(
        run_id=run_id,
        business_date=business_date,
        trigger=request.trigger,
        operator=actor,
        dry_run=request.dry_run,
        parameters=parameters,
        software_version=__version__,
        config_digest=settings.digest(),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    result = RunResult(run_id, business_date, ExitCode.OK, "RUNNING")
    bound = structlog.contextvars.bound_contextvars(run_id=str(run_id), business_date=str(business_date))
    with bound:
        log.info("run.started", dry_run=request.dry_run, trigger=request.trigger, operator=actor)
        progress = Progress(interval=settings.run.progress_interval_seconds)
        try:
            _check_audit_chain(app, actor)  # no money moves on a broken chain
            journal.record_approval_policy(settings.policy.four_eyes_threshold, run_id=run_id, display_name=actor)
            only = list(request.portfolio_ids) or None
            app.client.authenticate()  # refused credentials stop the run before any payout is touched
            if not request.dry_run:
                executor = _planner_engine(app, run_id, actor, stop, progress, flows)
                progress.phase("resume", journal.count_open().get(PayoutState.PLANNED, 0))
                result.execution.append(executor.execute(portfolio_ids=only))
            if FlowKind.DEPOSIT in flows:
                result.deposits = plan_deposits(app, run_id, business_date, request.dry_run, actor)
            if FlowKind.WITHDRAWAL_ANNOUNCE in flows:
                result.announcements = plan_announcements(app, run_id, business_date, request.dry_run, actor)
            planner = planner_for(
                app,
                run_id,
                business_date,
                dry_run=request.dry_run,
                actor=actor,
                on_page=lambda s: progress.planned(s.candidates),
            )
            progress.phase("plan", None)
            result.plan = planner.plan(only) if FlowKind.WITHDRAWAL in flows else PlanStats()
            journal.mark_planned(
                run_id,
                actor,
                {
                    "candidates": result.plan.candidates,
                    "pages": result.plan.pages,
                    "by_decision": dict(result.plan.by_decision),
                    "ledger_queries": result.plan.ledger_queries,
                }
                | ({"deposits": result.deposits.summary()} if result.deposits else {})
                | ({"announcements": result.announcements.summary()} if result.announcements else {}),
            )
            if not request.dry_run and not (stop and stop.is_set()):
                to_execute = (
                    result.plan.by_decision.get("PAY", 0)
                    + (result.deposits.by_decision.get("PAY", 0) if result.deposits else 0)
                    + (result.announcements.by_decision.get("PAY", 0) if result.announcements else 0)
                )
                remaining = (lambda: journal.count_open_of_run(run_id)) if processes > 1 else None
                progress.phase("execute", to_execute, remaining)
                workers = None
                if spawn_workers is not None and processes > 1:
                    workers = spawn_workers(run_id, processes - 1, _share_rate_limit(app, processes))
                executor = _planner_engine(app, run_id, actor, stop, progress, flows)
                try:
                    result.execution.append(executor.execute(portfolio_ids=only))
                finally:
                    if workers is not None:
                        workers.wait()  # they stop when nothing is left to claim (or on the planner's SIGTERM)
                if workers is not None:
                    # the planner always finishes what is left (e.g. the claims of a worker that died)
                    app.client.limit_rate(settings.investsuite.rate_limit_per_second)
                    result.execution.append(executor.execute(portfolio_ids=only))
            progress.close()
        except ConfigError as exc:
            result.exit_code, result.status, result.error = ExitCode.USAGE, "FAILED", str(exc)
        except BatchError as exc:
            result.exit_code, result.status, result.error = ExitCode.TECHNICAL_FAILURE, "FAILED", str(exc)
        except Exception as exc:  # the run must be recorded whatever happened
            log.exception("run.crashed")
            result.exit_code, result.status = ExitCode.TECHNICAL_FAILURE, "FAILED"
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            progress.close()
        if result.status == "RUNNING" and not request.dry_run and not (stop and stop.is_set()):
            _reconcile(app, result, actor)
        # one report (one streaming pass over the journal): exit code, run summary and the files
        report = build_report(app.journal_engine, run_id=run_id, as_of_now=True, verify_audit=False)
        if result.reconcile_error:
            report.reconcile = {"id": None, "checked": 0, "breaks": 0, "error": result.reconcile_error}
            report.checks = (
                checks(report.totals, report.reconcile, report.dry_run)
                + (report.deposits.checks() if report.deposits else [])
                + (report.announcements.checks() if report.announcements else [])
            )
        if result.status == "RUNNING":
            result.stalled = journal.count_stalled_in_run(run_id)
            if result.stalled:
                # an alert: money may have moved without InvestSuite being told yet; the next run resumes them
                log.warning("run.payouts_stalled", stalled=result.stalled)
            attention = _needs_attention(report, journal.count_open(), settings.run.alert_on_unchanged_holds)
            attention = attention or result.stalled > 0 or bool(result.reconcile_error)
            result.exit_code = ExitCode.ATTENTION if attention else ExitCode.OK
            result.status = "SUCCEEDED_WITH_EXCEPTIONS" if result.exit_code else "SUCCEEDED"
        summary = report.summary() | ({"reconcile_error": result.reconcile_error} if result.reconcile_error else {})
        journal.finish_run(
            run_id,
            status=result.status,
            exit_code=int(result.exit_code),
            summary=summary,
            error=result.error,
            actor=actor,
        )
        finished = journal.get_run(run_id)
        if finished is not None:  # the header as recorded: final status, exit code, end time
            report.runs[0] = run_header(finished)
            report.as_of = finished["finished_at"]
        report.audit = audit_summary(app.journal_engine, finished)  # the head stored with run.finished
        result.report = report
        result.report_paths = write_reports(result.report, settings.run.report_dir, settings.report.template_dir)
        log.info(
            "run.finished",
            status=result.status,
            exit_code=int(result.exit_code),
            candidates=result.report.candidates,
            **result.report.log_totals(),
        )
    return result


def _check_audit_chain(app: Services, actor: str) -> None:
    """Verify the audit chain from the last checkpoint (and record the new one); raise if it is broken."""
    verified = app.journal.verify_audit(since_checkpoint=True, record_checkpoint=True, display_name=actor)
    if not verified.ok:
        log.error("audit.chain_broken", first_broken_seq=verified.first_broken_seq, problem=verified.problem)
        raise AuditChainBrokenError(
            f"audit chain broken at seq {verified.first_broken_seq}: {verified.problem};"
            " nothing resumed or planned (see README: Verifying the audit trail)"
        )


def _reconcile(app: Services, result: RunResult, actor: str) -> None:
    """Read the ledger and InvestSuite back for the payouts this run created or drove (read-only)."""
    assert result.run_id is not None
    try:
        result.reconciliation = reconcile_payouts(app, actor=actor, run_id=result.run_id)
    except BatchError as exc:  # the payouts are done; the run says it could not check them
        log.warning("run.reconcile_failed", error=str(exc))
        result.reconcile_error = f"{type(exc).__name__}: {exc}"


def _needs_attention(report: Report, waiting: Mapping[str, int], alert_on_unchanged_holds: bool) -> bool:
    """Whether the run ends with exit code 3: anything new needing a person, or a reconciliation break.

    Exceptions of this run (new holds, needs attention, in progress), payouts of any run that need
    attention, reconciliation breaks; holds unchanged since the previous run (and HELD payouts of
    earlier runs) only when ``alert_on_unchanged_holds``.
    """
    exceptions = report.exceptions_count - (0 if alert_on_unchanged_holds else report.still_held_count)
    for section in (report.deposits, report.announcements):  # new holds and attention, like withdrawals
        if section is not None:
            exceptions += len(section.exceptions) if alert_on_unchanged_holds else section.new_exceptions
    waiting_states = (
        (PayoutState.HELD, PayoutState.NEEDS_ATTENTION) if alert_on_unchanged_holds else (PayoutState.NEEDS_ATTENTION,)
    )
    return exceptions > 0 or report.reconcile_breaks > 0 or any(waiting.get(s, 0) for s in waiting_states)


def _share_rate_limit(app: Services, processes: int) -> dict[str, str]:
    """Split ``rate_limit_per_second`` between the processes; returns the workers' environment override."""
    rate = app.settings.investsuite.rate_limit_per_second
    if not rate:
        return {}
    share = rate / processes
    app.client.limit_rate(share)
    return {"BATCH_INVESTSUITE__RATE_LIMIT_PER_SECOND": repr(share)}


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


def _planner_engine(
    app: Services,
    run_id: uuid.UUID,
    actor: str,
    stop: threading.Event | None,
    progress: Progress,
    flows: frozenset[FlowKind],
) -> Engine:
    worker = f"{socket.gethostname()}:{os.getpid()}:{run_id.hex[:8]}"
    return engine_for(app, run_id, actor=actor, worker=worker, flows=sorted(flows), stop=stop, on_done=progress.done)


def run_worker(
    app: Services, run_id: uuid.UUID, *, actor: str, worker_name: str, stop: threading.Event | None = None
) -> ExecutionStats:
    """One scale-out worker: claim and drive operations of ``run_id`` until none is left."""
    return engine_for(app, run_id, actor=actor, worker=worker_name, stop=stop).execute()


__all__ = ["ExitCode", "RunRequest", "RunResult", "business_today", "run_job", "run_worker"]
