"""The ``batch`` command: parse, build the app, call the service, map the result to an exit code.

Exit codes: 0 done; 3 done with held or needs-attention payouts; 1 technical failure;
2 usage or configuration error; 75 another run holds the lock.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import structlog

from batch import __version__
from batch.bootstrap import App, build_app
from batch.domain.payout import OPEN_STATES, PayoutState
from batch.entrypoints import oversight
from batch.errors import BatchError, ConfigError, InvalidTransitionError, OperatorRefusedError
from batch.logs import configure_logging
from batch.service.run import ExitCode, RunRequest, RunResult, run_job
from batch.settings import Settings, load_settings

log = structlog.get_logger("batch.cli")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an id: {text!r}") from exc


def _operator(args: argparse.Namespace) -> str:
    return str(args.operator or os.environ.get("BATCH_OPERATOR") or os.environ.get("USER") or "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch", description="Nightly withdrawal payout job beside InvestSuite.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML config file (default: $BATCH_CONFIG)")
    parser.add_argument("--log-level", default=os.environ.get("BATCH_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="the nightly payout run")
    run.add_argument("--date", type=_date, help="business date (default: today in the configured time zone)")
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
        type=int,
        default=None,
        help="processes executing payouts, this one included (default: [run] workers, 'auto' = usable CPUs, max 4)",
    )
    run.add_argument("--trigger", default="manual", choices=["cron", "manual", "scheduler", "operator", "test"])
    run.add_argument("--operator", help="who runs it (default: $BATCH_OPERATOR or $USER)")

    worker = sub.add_parser("worker", help="a scale-out worker: execute payouts of a planned run")
    worker.add_argument("--run-id", type=_uuid, help="run to work for (default: wait for the current run)")
    worker.add_argument("--wait-seconds", type=float, default=600.0, help="how long to wait for a plan")
    worker.add_argument("--operator")

    migrate = sub.add_parser("migrate", help="apply pending SQL migrations")
    migrate.add_argument("--component", choices=["journal", "ledger", "sandbox", "all"], default="journal")

    payouts = sub.add_parser("payouts", help="list payouts by state")
    payouts.add_argument(
        "--state", default="open", choices=["open", "needs-attention", "held", "completed", "cancelled", "all"]
    )
    payouts.add_argument("--limit", type=int, default=200)

    report = sub.add_parser("report", help="render a run report")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", type=_date)
    which.add_argument("--run", type=_uuid)
    report.add_argument("--format", choices=["text", "json", "csv", "html"], default="text")
    report.add_argument("-o", "--output", type=Path)

    runs = sub.add_parser("runs", help="run history")
    runs.add_argument("--date", type=_date)
    runs.add_argument("--limit", type=int, default=50)

    reconcile = sub.add_parser(
        "reconcile", help="match the journal with the ledger and InvestSuite, read back (read-only); exit 3 on breaks"
    )
    reconcile.add_argument("--date", type=_date, help="the payouts of this business date")
    reconcile.add_argument("--run", type=_uuid, help="only the payouts this run created or drove")
    reconcile.add_argument("--book", action="store_true", help="every REAL_MONEY portfolio's cash against the ledger")
    reconcile.add_argument("--format", choices=["text", "json"], default="text")
    reconcile.add_argument("--operator", help="who runs it (default: $BATCH_OPERATOR or $USER)")

    oversight.add_parsers(sub, _uuid)

    sandbox = sub.add_parser("sandbox", help="the local InvestSuite-compatible sandbox (never in production)")
    sandbox_sub = sandbox.add_subparsers(dest="action", required=True)
    serve = sandbox_sub.add_parser("serve")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--host", default="127.0.0.1")
    seed = sandbox_sub.add_parser("seed")
    seed.add_argument("--size", type=int, default=600)
    seed.add_argument("--seed", type=int, default=42)

    db = sub.add_parser("db", help="the embedded PostgreSQL server")
    db.add_argument("action", choices=["start", "stop", "status"])

    demo = sub.add_parser("demo", help="embedded PostgreSQL + sandbox + seeded scenario + the nightly run")
    demo.add_argument("--size", type=int, default=600)
    demo.add_argument("--reset", action="store_true", help="start from empty databases")
    demo.add_argument("--keep-running", action="store_true", help="leave the database server running")

    listen = sub.add_parser("listen", help="react to InvestSuite's bus events (long-running; one process per bus)")
    listen.add_argument("--bus", choices=["rabbitmq", "mqtt", "kafka", "nats"], help="default: [bus] kind")

    schedule = sub.add_parser("schedule", help="resident scheduler (APScheduler) calling the same run")
    schedule.add_argument("--once-in", type=float, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    handler = COMMANDS[args.command]
    try:
        return int(handler(settings, args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except (InvalidTransitionError, OperatorRefusedError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.TECHNICAL_FAILURE
    except KeyboardInterrupt:
        return ExitCode.TECHNICAL_FAILURE


def _with_app(settings: Settings, fn: Callable[[App], int], *, migrate_schemas: bool = False) -> int:
    app = build_app(settings, migrate_schemas=migrate_schemas)
    try:
        return fn(app)
    finally:
        app.close()
        if app.dsns.started_server is not None:  # a command stops what it started
            app.dsns.started_server.stop()


def print_run_result(result: RunResult, template_dir: Path | None = None) -> None:
    if result.report is not None:
        from batch.service.render import render_text  # noqa: PLC0415

        print(render_text(result.report, template_dir), end="")
    if result.error:
        print(f"error: {result.error}")
    for fmt, path in sorted(result.report_paths.items()):
        print(f"  report ({fmt}): {path}")
    print(f"exit code {int(result.exit_code)} ({result.status})")


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise ConfigError("--workers must be 1..64")
    request = RunRequest(
        business_date=args.date,
        portfolio_ids=tuple(args.portfolio),
        dry_run=args.dry_run,
        trigger=args.trigger,
        operator=_operator(args),
        workers=args.workers,
        flows=tuple(args.flow),
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # graceful: payouts in flight finish their current step, the run is recorded, then we exit
        log.warning("run.stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)

    def go(app: App) -> int:
        from batch.entrypoints.workers import spawn_local_workers  # noqa: PLC0415
        from batch.service.metrics import publish_run_metrics  # noqa: PLC0415

        result = run_job(app, request, stop=stop, spawn_workers=spawn_local_workers(args.config))
        print_run_result(result, settings.report.template_dir)
        publish_run_metrics(settings.metrics, result)
        return int(result.exit_code)

    return _with_app(settings, go)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from batch.entrypoints.workers import worker_main  # noqa: PLC0415

    return _with_app(settings, lambda app: worker_main(app, args.run_id, _operator(args), args.wait_seconds))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from batch.adapters.migrations import migrate  # noqa: PLC0415
    from batch.adapters.postgres import make_engine, resolve_dsns  # noqa: PLC0415

    dsns = resolve_dsns(settings.database)
    components = ["journal", "ledger", "sandbox"] if args.component == "all" else [args.component]
    for component in components:
        engine = make_engine(getattr(dsns, component), pool_size=1)
        try:
            applied = migrate(engine, component)
        finally:
            engine.dispose()
        print(f"{component}: {', '.join(applied) if applied else 'up to date'}")
    return ExitCode.OK


_STATE_CHOICES: dict[str, frozenset[PayoutState]] = {
    "open": OPEN_STATES,
    "needs-attention": frozenset({PayoutState.NEEDS_ATTENTION}),
    "held": frozenset({PayoutState.HELD}),
    "completed": frozenset({PayoutState.COMPLETED}),
    "cancelled": frozenset({PayoutState.CANCELLED}),
    "all": frozenset(PayoutState),
}


def cmd_payouts(settings: Settings, args: argparse.Namespace) -> int:
    def go(app: App) -> int:
        rows = app.journal.list_payouts(sorted(_STATE_CHOICES[args.state]), limit=args.limit)
        print(f"{'payout id':<36}  {'portfolio':<28} {'state':<20} {'amount':>14} ccy  date        step / reason")
        for p in rows:
            why = p.failing_step or p.hold_reason or ""
            if p.last_error:
                why += f": {p.last_error[:80]}"
            print(
                f"{p.id!s:<36}  {p.portfolio_id:<28} {p.state.value:<20} {p.amount:>14f} {p.currency}  "
                f"{p.business_date}  {why}"
            )
        print(f"{len(rows)} payout(s)")
        return ExitCode.OK

    return _with_app(settings, go)


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from batch.service import render  # noqa: PLC0415
    from batch.service.report import build_report  # noqa: PLC0415

    def go(app: App) -> int:
        try:
            report = build_report(app.journal_engine, run_id=args.run, business_date=args.date)
        except LookupError as exc:
            print(str(exc), file=sys.stderr)
            return ExitCode.USAGE
        template_dir = settings.report.template_dir
        if args.output:
            with args.output.open("w", encoding="utf-8", newline="") as out:
                render.write(report, args.format, out, template_dir=template_dir)
            print(f"wrote {args.output}")
        else:
            render.write(report, args.format, sys.stdout, template_dir=template_dir)
        return ExitCode.OK

    return _with_app(settings, go)


def cmd_runs(settings: Settings, args: argparse.Namespace) -> int:
    from batch.service.history import run_history  # noqa: PLC0415

    def go(app: App) -> int:
        for line in run_history(app.journal_engine, business_date=args.date, limit=args.limit):
            print(line)
        return ExitCode.OK

    return _with_app(settings, go)


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from batch.service.reconcile_text import reconciliation_lines  # noqa: PLC0415
    from batch.service.reconciling import reconcile_book, reconcile_payouts  # noqa: PLC0415

    if args.book == bool(args.date or args.run):
        print("reconcile: give --book, or --date and/or --run", file=sys.stderr)
        return ExitCode.USAGE

    def go(app: App) -> int:
        if args.book:
            result = reconcile_book(app, actor=_operator(args))
        else:
            if args.run and args.date:
                run = app.journal.get_run(args.run)
                if run is not None and run["business_date"] != args.date:
                    print(
                        f"run {args.run} is of business date {run['business_date']}, not {args.date}", file=sys.stderr
                    )
                    return ExitCode.USAGE
            try:
                result = reconcile_payouts(app, actor=_operator(args), business_date=args.date, run_id=args.run)
            except LookupError as exc:
                print(str(exc), file=sys.stderr)
                return ExitCode.USAGE
        if args.format == "json":
            document = {**result.figures(), "checked": result.checked, "breaks": [b.to_dict() for b in result.breaks]}
            print(json.dumps({"kind": result.kind, "id": str(result.id), **document}, indent=2, default=str))
        else:
            for line in reconciliation_lines(result):
                print(line)
        return ExitCode.OK if result.clean else ExitCode.ATTENTION

    return _with_app(settings, go)


def cmd_sandbox(settings: Settings, args: argparse.Namespace) -> int:
    from batch.adapters.migrations import migrate  # noqa: PLC0415
    from batch.adapters.postgres import make_engine, resolve_dsns  # noqa: PLC0415

    dsns = resolve_dsns(settings.database)
    for component in ("sandbox", "ledger"):
        engine = make_engine(getattr(dsns, component), pool_size=1)
        try:
            migrate(engine, component)
        finally:
            engine.dispose()
    if args.action == "serve":
        from batch.sandbox.server import serve  # noqa: PLC0415

        print(f"sandbox on http://{args.host}:{args.port} (Ctrl-C to stop)")
        serve(dsns.sandbox, host=args.host, port=args.port)
        return ExitCode.OK
    from batch.sandbox.seed import seed_scenario  # noqa: PLC0415

    manifest = seed_scenario(dsns.sandbox, dsns.ledger, size=args.size, rng_seed=args.seed)
    print(f"seeded {manifest.get('size')} portfolios: {manifest.get('cases')}")
    return ExitCode.OK


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from batch.adapters.postgres import EmbeddedServer, redact_dsn  # noqa: PLC0415

    server = EmbeddedServer(settings.database.data_dir)
    if args.action == "start":
        print(f"embedded PostgreSQL running: {redact_dsn(server.start())}")
    elif args.action == "stop":
        print("stopped" if server.stop() else "not running")
    else:
        running = (settings.database.data_dir / "postmaster.pid").exists()
        print(f"embedded PostgreSQL under {settings.database.data_dir}: {'running' if running else 'stopped'}")
    return ExitCode.OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from batch.entrypoints.demo import run_demo  # noqa: PLC0415

    return run_demo(settings, size=args.size, reset=args.reset, keep_running=args.keep_running)


def cmd_schedule(settings: Settings, args: argparse.Namespace) -> int:
    from batch.entrypoints.scheduler import run_scheduler  # noqa: PLC0415

    return run_scheduler(settings, config_path=args.config)


def cmd_listen(settings: Settings, args: argparse.Namespace) -> int:
    from batch.entrypoints.listen import listen  # noqa: PLC0415

    return listen(settings, args.bus)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": cmd_run,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "payouts": cmd_payouts,
    "report": cmd_report,
    "runs": cmd_runs,
    "reconcile": cmd_reconcile,
    "sandbox": cmd_sandbox,
    "db": cmd_db,
    "demo": cmd_demo,
    "schedule": cmd_schedule,
    "listen": cmd_listen,
    **oversight.commands(_with_app),
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
