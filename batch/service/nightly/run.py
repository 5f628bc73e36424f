"""One nightly run: lock, resume open payouts, plan, execute, report. Called by the CLI and the scheduler.

Exit codes (for cron and Kubernetes podFailurePolicy):
    0   done
    3   done, but something needs a person: a new hold, a payout that needs attention (of any run), a
        payout still in progress, a reconciliation break; a hold unchanged since the previous run
        ("still held") only with ``[run] alert_on_unchanged_holds = true``
    3   also: stopped by SIGTERM/SIGINT (recorded INTERRUPTED, with when and what was in flight)
    1   technical failure (the run is recorded as FAILED)
    2   usage or configuration error
    75  another run holds the lock (nothing was done)
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum
from pathlib import Path
from typing import Protocol

import structlog

from batch import __version__
from batch.adapters.journal.bus import BusStore
from batch.adapters.journal.leases import RUN_LEASE, LeaseSession
from batch.domain.business_date import business_today
from batch.domain.payout import FlowKind, PayoutState
from batch.errors import BatchError, ConfigError, FenceLostError, RunLockedError
from batch.service.audit_checks import check_before_money
from batch.service.context import Services
from batch.service.engine.steps import Engine, ExecutionStats
from batch.service.heartbeat import Heartbeat
from batch.service.nightly.capacity import fit_processes
from batch.service.nightly.interruption import INTERRUPTED, interruption_record, interruption_text
from batch.service.nightly.progress import PhaseTimer, Progress
from batch.service.planning.announcements import AnnouncementStats, plan_announcements
from batch.service.planning.deposits import DepositStats, plan_deposits
from batch.service.planning.withdrawals import PlanStats
from batch.service.reconcile.readback import reconcile_payouts
from batch.service.reconcile.result import Reconciliation
from batch.service.reports.build import Report, audit_summary, build_report, run_header, write_reports
from batch.service.reports.checks import checks
from batch.service.wiring import engine_for, planner_for
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

    def lease_owners(self) -> list[str]:
        """The names the workers lease payouts under (released once they all exited)."""
        ...


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
    #: open operations leased by another live process (a listener, a worker of a run not finished):
    #: listed and counted as in progress, exit code 3
    in_progress_elsewhere: list[dict[str, object]] = field(default_factory=list)
    #: wall seconds per phase (resume, plan, execute, reconcile, report): in the summary and the metrics
    phases: PhaseTimer = field(default_factory=PhaseTimer)


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
    run_id = uuid.uuid4()
    lease = LeaseSession(
        app.journal_engine,
        RUN_LEASE,
        ttl_seconds=settings.run.lease_ttl_seconds,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    try:
        lease.acquire(run_id, actor=actor, release_payouts=True)
    except RunLockedError as exc:
        lease.release()
        journal.audit(
            actor=actor,
            action="run.refused",
            details={
                "business_date": business_date,
                "reason": "another run holds the lock",
                "lease": str(exc),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        log.warning("run.refused_locked", business_date=str(business_date), why=str(exc))
        return RunResult(None, business_date, ExitCode.LOCKED, "REFUSED", error="another run holds the lock")
    stop = stop or threading.Event()
    heartbeat = Heartbeat(
        lease,
        interval=settings.run.heartbeat_seconds,
        warn_after=settings.run.journal_stall_warn_seconds,
        lost_after=settings.run.lease_ttl_seconds * 0.75,
        abort_after=settings.run.journal_stall_abort_seconds,
        on_lost=lambda _reason: stop.set(),  # no new claim, no new step: the fence refuses them anyway
    ).start()
    try:
        if check is not None:
            check()
        return _locked_run(app, request, business_date, stop, spawn_workers, run_id, heartbeat)
    finally:
        heartbeat.stop()
        lease.release()  # logged, never raised: the run's outcome is already recorded (one exit code)


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
    stop: threading.Event,
    spawn_workers: Callable[[uuid.UUID, int, Mapping[str, str]], WorkerGroup] | None,
    run_id: uuid.UUID,
    heartbeat: Heartbeat,
) -> RunResult:
    settings = app.settings
    journal, actor = app.journal, request.operator
    abandoned = journal.abandon_stale_runs(actor)
    if abandoned:
        log.warning("run.abandoned_marked", runs=[str(r) for r in abandoned])
    # a dead listener's payouts too (its lease judged like a run's): claimable now, not in lease_seconds
    dead_listeners, _ = BusStore(app.journal_engine).abandon_dead_listeners(actor, own_instance="")
    if dead_listeners:
        log.warning("run.dead_listeners_abandoned", runs=[str(r) for r in dead_listeners])
    # processes executing payouts, the planner included (more only when the caller can start workers)
    can_spawn = spawn_workers is not None and not request.dry_run
    processes = fit_processes(app, request.workers or settings.run.worker_processes()) if can_spawn else 1
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
            check_before_money(app, actor)  # no money moves on a broken chain, nor past a failed full check
            journal.record_approval_policy(settings.policy.four_eyes_threshold, run_id=run_id, display_name=actor)
            only = list(request.portfolio_ids) or None
            app.client.authenticate()  # refused credentials stop the run before any payout is touched
            if not request.dry_run:
                executor = _planner_engine(app, run_id, actor, stop, progress, flows)
                progress.phase("resume", journal.count_open().get(PayoutState.PLANNED, 0))
                result.phases.start("resume")
                result.execution.append(executor.execute(portfolio_ids=only))
            result.phases.start("plan")
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
            if not request.dry_run and not stop.is_set():
                to_execute = (
                    result.plan.by_decision.get("PAY", 0)
                    + (result.deposits.by_decision.get("PAY", 0) if result.deposits else 0)
                    + (result.announcements.by_decision.get("PAY", 0) if result.announcements else 0)
                )
                remaining = (lambda: journal.count_open_of_run(run_id)) if processes > 1 else None
                progress.phase("execute", to_execute, remaining)
                result.phases.start("execute")
                workers = None
                if spawn_workers is not None and processes > 1:
                    workers = spawn_workers(run_id, processes - 1, _share_rate_limit(app, processes))
                executor = _planner_engine(app, run_id, actor, stop, progress, flows)
                try:
                    result.execution.append(executor.execute(portfolio_ids=only))
                finally:
                    if workers is not None:
                        workers.wait()  # they stop when nothing is left to claim (or on the planner's SIGTERM)
                        # all exited: what any of them still leases (one killed mid-step) is free at once
                        freed = journal.release_leases_of(workers.lease_owners())
                        if freed:
                            log.warning("run.worker_leases_released", payouts=freed)
                if workers is not None:
                    # the planner always finishes what is left (e.g. the claims of a worker that died)
                    app.client.limit_rate(settings.investsuite.rate_limit_per_second)
                    result.execution.append(executor.execute(portfolio_ids=only))
            result.phases.stop()
            if heartbeat.lost.is_set():
                raise FenceLostError(heartbeat.lost_reason)
            if not request.dry_run:
                result.in_progress_elsewhere = journal.held_elsewhere([_planner_name(run_id)])
            progress.close()
        except FenceLostError as exc:
            result.exit_code, result.status, result.error = ExitCode.TECHNICAL_FAILURE, "FENCED", str(exc)
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
        if result.status == "FENCED":
            # another run owns the journal now: this one records nothing more and writes no report (the
            # payouts it did not finish are that run's to read back and complete; none is counted twice)
            log.error("run.fence_lost", error=result.error, exit_code=int(result.exit_code))
            return result
        if result.in_progress_elsewhere:
            log.warning(
                "run.operations_in_progress",
                count=len(result.in_progress_elsewhere),
                operations=[held_line(row) for row in result.in_progress_elsewhere[:50]],
            )
        if result.status == "RUNNING" and not request.dry_run and not stop.is_set():
            result.phases.start("reconcile")
            _reconcile(app, result, actor)
        # one report (one streaming pass over the journal): exit code, run summary and the files
        result.phases.start("report")
        report = build_report(app.journal_engine, run_id=run_id, as_of_now=True, verify_audit=False)
        if result.reconcile_error:
            report.reconcile = {"id": None, "checked": 0, "breaks": 0, "error": result.reconcile_error}
            report.checks = (
                checks(report.totals, report.reconcile, report.dry_run, report.kind)
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
            attention = attention or bool(result.in_progress_elsewhere)  # never 0 while others hold open work
            result.exit_code = ExitCode.ATTENTION if attention else ExitCode.OK
            result.status = "SUCCEEDED_WITH_EXCEPTIONS" if result.exit_code else "SUCCEEDED"
        interrupted: dict[str, object] = {}
        if stop is not None and stop.is_set() and result.status.startswith("SUCCEEDED"):
            # stopped by a signal: a state of its own (not ABANDONED, not FAILED), and the night is not done
            interrupted = interruption_record(stop, journal.in_flight_of_run(run_id))
            result.status, result.exit_code = INTERRUPTED, ExitCode.ATTENTION
            result.error = interruption_text(interrupted)
            log.warning("run.interrupted", **interrupted)
        result.phases.stop()
        summary = report.summary() | ({"reconcile_error": result.reconcile_error} if result.reconcile_error else {})
        summary["phases"] = dict(result.phases.seconds)
        if result.in_progress_elsewhere:
            summary["in_progress_elsewhere"] = [held_line(row) for row in result.in_progress_elsewhere]
        summary |= {"interrupted": interrupted} if interrupted else {}
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


def _planner_name(run_id: uuid.UUID) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id.hex[:8]}"


def held_line(row: Mapping[str, object]) -> str:
    """One operation held by another process, for the log and the run summary."""
    return f"{row['flow']} {row['id']} {row['portfolio_id']} {row['state']} leased by {row['lease_owner']}"


def _planner_engine(
    app: Services,
    run_id: uuid.UUID,
    actor: str,
    stop: threading.Event | None,
    progress: Progress,
    flows: frozenset[FlowKind],
) -> Engine:
    worker = _planner_name(run_id)
    return engine_for(app, run_id, actor=actor, worker=worker, flows=sorted(flows), stop=stop, on_done=progress.done)


__all__ = ["ExitCode", "RunRequest", "RunResult", "held_line", "run_job"]
