"""``batch run``: the nightly payout run from the command line, and ``batch worker`` beside it.

Before anything is recorded the request is checked (``batch.service.nightly.checks``): the business date
within the run window (or a backfill with its reason), every ``--portfolio`` known to InvestSuite. The
run's summary goes to stdout; a failed run also writes its one error line to stderr.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from batch.bootstrap import App
from batch.domain.business_date import business_today
from batch.entrypoints.console import iso_date, report_error, seconds, whole_number
from batch.entrypoints.oversight import WithApp
from batch.errors import UsageError
from batch.logs import json_logging
from batch.service.nightly.interruption import Interruption
from batch.service.nightly.run import ExitCode, RunRequest, RunResult, held_line, run_job
from batch.settings import Settings

log = structlog.get_logger("batch.cli")


def operator_name(args: argparse.Namespace) -> str:
    """Who runs it, as a display name: ``--operator``, ``$BATCH_OPERATOR``, ``$USER``."""
    return str(args.operator or os.environ.get("BATCH_OPERATOR") or os.environ.get("USER") or "unknown")


def add_parsers(sub: Any, run_id: Callable[[str], Any]) -> None:
    """The ``run`` and ``worker`` sub-commands."""
    run = sub.add_parser("run", help="the nightly payout run")
    run.add_argument(
        "--date",
        type=iso_date,
        help="business date (default: today in [run] timezone; not after tomorrow, not before the journal's first)",
    )
    run.add_argument(
        "--backfill-reason",
        metavar="WHY",
        help="run a date before the journal's first business date; the reason is recorded with the run",
    )
    run.add_argument("--portfolio", action="append", default=[], metavar="ID", help="only these portfolios")
    run.add_argument("--dry-run", action="store_true", help="decide and record, but pay nothing and write nothing")
    run.add_argument(
        "--flow",
        action="append",
        choices=["withdrawals", "deposits"],
        default=[],
        help="only this flow (repeatable; default: withdrawals and, when [deposits] enabled, deposits)",
    )
    run.add_argument(
        "--workers",
        type=whole_number(1, 64),
        default=None,
        help="processes executing payouts, this one included (default: [run] workers, 'auto' = usable CPUs, max 4)",
    )
    run.add_argument("--trigger", default="manual", choices=["cron", "manual", "scheduler", "operator", "test"])
    run.add_argument("--operator", help="who runs it (default: $BATCH_OPERATOR or $USER)")

    worker = sub.add_parser("worker", help="a scale-out worker: execute payouts of a planned run")
    worker.add_argument("--run-id", type=run_id, help="run to work for (default: wait for the current run)")
    worker.add_argument("--wait-seconds", type=seconds, default=600.0, help="how long to wait for a plan")
    worker.add_argument("--operator")


def print_run_result(result: RunResult, template_dir: Path | None = None) -> None:
    """The run's text summary, its error, the report files and the exit code, on stdout."""
    if result.report is not None:
        from batch.service.reports.render import render_text  # noqa: PLC0415

        print(render_text(result.report, template_dir), end="")
    if result.in_progress_elsewhere:  # open operations another live process holds: in progress, not done
        print(f"in progress elsewhere: {len(result.in_progress_elsewhere)} (held by another live process)")
        for row in result.in_progress_elsewhere[:20]:
            print(f"  {held_line(row)}")
    if result.error:
        print(f"error: {result.error}")
    if result.phases.seconds:
        print("phases: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.phases.seconds.items()))
    for fmt, path in sorted(result.report_paths.items()):
        print(f"  report ({fmt}): {path}")
    print(f"exit code {int(result.exit_code)} ({result.status})")


def _worker_options(args: argparse.Namespace) -> list[str]:
    """The planner's logging switches for its workers (they share its stderr: one format for all)."""
    options = ["--log-format", "json" if json_logging() else "console", "--log-level", args.log_level]
    return [*options, "--debug"] if args.debug else options


def cmd_run(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    if args.backfill_reason is not None and not args.backfill_reason.strip():
        raise UsageError("--backfill-reason is blank: say why this date is run")
    request = RunRequest(
        business_date=args.date,
        portfolio_ids=tuple(args.portfolio),
        dry_run=args.dry_run,
        trigger=args.trigger,
        operator=operator_name(args),
        workers=args.workers,
        flows=tuple(args.flow),
        backfill_reason=args.backfill_reason,
    )
    stop = Interruption()

    def on_signal(signum: int, _frame: object) -> None:
        # graceful: payouts in flight finish their current step, the run is recorded INTERRUPTED, then we exit
        name = signal.Signals(signum).name
        log.warning("run.stop_requested", signal=name)
        stop.request(name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def go(app: App) -> int:
        from batch.entrypoints.workers import spawn_local_workers  # noqa: PLC0415
        from batch.service.nightly.checks import check_run_request  # noqa: PLC0415
        from batch.service.nightly.metrics import publish_run_metrics  # noqa: PLC0415

        def check() -> None:
            check_run_request(app, request, today=business_today(settings.run.timezone))

        spawn = spawn_local_workers(args.config, _worker_options(args))
        result = run_job(app, request, stop=stop, spawn_workers=spawn, check=check)
        print_run_result(result, settings.report.template_dir)
        publish_run_metrics(settings.metrics, result)
        if result.error and result.exit_code in (ExitCode.TECHNICAL_FAILURE, ExitCode.USAGE):
            what = "configuration error" if result.exit_code == ExitCode.USAGE else "run failed"
            report_error(f"{what}: {result.error}", int(result.exit_code))
        return int(result.exit_code)

    return with_app(settings, go)


def cmd_worker(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    from batch.entrypoints.workers import worker_main  # noqa: PLC0415

    return with_app(settings, lambda app: worker_main(app, args.run_id, operator_name(args), args.wait_seconds))


def commands(with_app: WithApp) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    """The commands of this module, each run with the CLI's ``with_app``."""
    return {
        name: functools.partial(command, with_app=with_app)
        for name, command in (("run", cmd_run), ("worker", cmd_worker))
    }
