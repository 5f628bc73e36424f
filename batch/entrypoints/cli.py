"""The ``batch`` command: parse, build the app, call the service, map the result to an exit code.

Exit codes: 0 done; 3 done with held or needs-attention payouts; 1 technical failure;
2 usage or configuration error; 75 another run holds the lock.

Every error ends the command with ONE line on stderr (``batch.entrypoints.console.report_error``): a
usage error (argparse's included), a configuration error, a refusal -> 2; anything else -> 1. A
traceback only with ``--debug``. With JSON logs (``--log-format json``, or ``auto`` off a terminal)
that line is a ``cli.error`` JSON event, like every other line on stderr.

Commands by group: ``nightly`` (run, worker), ``listings`` (payouts, report, runs), ``oversight``
(whoami, payout, audit), here the rest (migrate, reconcile, sandbox, db, demo, schedule).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from batch import __version__
from batch.bootstrap import App, build_app
from batch.entrypoints import listings, nightly, oversight
from batch.entrypoints.console import an_id, iso_date, report_error, whole_number
from batch.errors import (
    BatchError,
    ConfigError,
    InvalidTransitionError,
    OperatorRefusedError,
    UsageError,
)
from batch.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from batch.service.nightly.run import ExitCode
from batch.settings import Settings, load_settings


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (a UsageError), not a usage block and an exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("BATCH_LOG_FORMAT", "auto"),
        help="log lines on stderr: json, console, or auto (JSON unless stderr is a terminal; env BATCH_LOG_FORMAT)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=os.environ.get("BATCH_LOG_LEVEL", "INFO").upper(),
        help="INFO: a run's milestones and progress; DEBUG: every payout's steps too (env BATCH_LOG_LEVEL)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batch", description="Nightly withdrawal payout job beside InvestSuite.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML config file (default: $BATCH_CONFIG)")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    nightly.add_parsers(sub, an_id)

    migrate = sub.add_parser("migrate", help="apply pending SQL migrations")
    migrate.add_argument("--component", choices=["journal", "ledger", "sandbox", "all"], default="journal")

    listings.add_parsers(sub, an_id)

    reconcile = sub.add_parser(
        "reconcile", help="match the journal with the ledger and InvestSuite, read back (read-only); exit 3 on breaks"
    )
    reconcile.add_argument("--date", type=iso_date, help="the payouts of this business date")
    reconcile.add_argument("--run", type=an_id, help="only the payouts this run created or drove")
    reconcile.add_argument("--book", action="store_true", help="every REAL_MONEY portfolio's cash against the ledger")
    reconcile.add_argument("--format", choices=["text", "json"], default="text")
    reconcile.add_argument("--operator", help="who runs it (default: $BATCH_OPERATOR or $USER)")

    oversight.add_parsers(sub, an_id)

    sandbox = sub.add_parser("sandbox", help="the local InvestSuite-compatible sandbox (never in production)")
    sandbox_sub = sandbox.add_subparsers(dest="action", required=True)
    serve = sandbox_sub.add_parser("serve")
    serve.add_argument("--port", type=whole_number(0, 65535), default=8765)
    serve.add_argument("--host", default="127.0.0.1")
    seed = sandbox_sub.add_parser("seed")
    seed.add_argument("--size", type=whole_number(1, 1_000_000), default=600)
    seed.add_argument("--seed", type=int, default=42)

    db = sub.add_parser("db", help="the embedded PostgreSQL server")
    db.add_argument("action", choices=["start", "stop", "status"])

    demo = sub.add_parser("demo", help="embedded PostgreSQL + sandbox + seeded scenario + the nightly run")
    demo.add_argument("--size", type=whole_number(1, 1_000_000), default=600)
    demo.add_argument("--reset", action="store_true", help="start from empty databases")
    demo.add_argument("--keep-running", action="store_true", help="leave the database server running")

    listen = sub.add_parser("listen", help="react to InvestSuite's bus events (long-running; one process per bus)")
    listen.add_argument("--bus", choices=["rabbitmq", "mqtt", "nats"], help="default: [bus] kind")

    schedule = sub.add_parser("schedule", help="resident scheduler (APScheduler) calling the same run")
    schedule.add_argument("--once-in", type=float, help=argparse.SUPPRESS)
    return parser


def _early_logging(argv: Sequence[str]) -> argparse.Namespace:
    """The logging switches, read before the full parse so that even a usage error is logged as asked.

    Values argparse would refuse fall back to the defaults here; the full parse then reports them.
    """
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--log-format", default=os.environ.get("BATCH_LOG_FORMAT", "auto"))
    early.add_argument("--log-level", default=os.environ.get("BATCH_LOG_LEVEL", "INFO"))
    early.add_argument("--debug", action="store_true")
    known, _ = early.parse_known_args(list(argv))
    if known.log_format not in LOG_FORMATS:
        known.log_format = "auto"
    if known.log_level.upper() not in LOG_LEVELS:
        known.log_level = "INFO"
    return known


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    early = _early_logging(arguments)
    configure_logging(early.log_level, early.log_format, tracebacks=early.debug)
    try:
        args = build_parser().parse_args(arguments)
        settings = load_settings(args.config)
        return int(COMMANDS[args.command](settings, args))
    except UsageError as exc:
        return _failed(f"usage error: {exc}", ExitCode.USAGE, exc, early.debug)
    except ConfigError as exc:
        return _failed(f"configuration error: {exc}", ExitCode.USAGE, exc, early.debug)
    except (InvalidTransitionError, OperatorRefusedError) as exc:
        return _failed(f"refused: {exc}", ExitCode.USAGE, exc, early.debug)
    except BatchError as exc:
        return _failed(f"error: {exc}", ExitCode.TECHNICAL_FAILURE, exc, early.debug)
    except BrokenPipeError:  # the reader went away (`batch payouts | head`): nobody is left to tell
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python exits
        return ExitCode.TECHNICAL_FAILURE
    except KeyboardInterrupt as exc:
        return _failed("interrupted", ExitCode.TECHNICAL_FAILURE, exc, early.debug)
    except Exception as exc:  # a technical failure nobody foresaw: still one line (the traceback with --debug)
        return _failed(f"error: {type(exc).__name__}: {exc}", ExitCode.TECHNICAL_FAILURE, exc, early.debug)


def _failed(message: str, code: ExitCode, exc: BaseException, debug: bool) -> int:
    return report_error(message, int(code), exc_info=exc if debug else None)


def _with_app(settings: Settings, fn: Callable[[App], int], *, migrate_schemas: bool = False) -> int:
    app = build_app(settings, migrate_schemas=migrate_schemas)
    try:
        return fn(app)
    finally:
        app.close()
        if app.dsns.started_server is not None:  # a command stops what it started
            app.dsns.started_server.stop()


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


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from batch.service.reconcile.readback import reconcile_book, reconcile_date  # noqa: PLC0415
    from batch.service.reconcile.text import reconciliation_lines  # noqa: PLC0415

    if args.book == bool(args.date or args.run):
        raise UsageError("batch reconcile: give --book, or --date and/or --run")

    def go(app: App) -> int:
        if args.book:
            results = [reconcile_book(app, actor=nightly.operator_name(args))]
        else:
            if args.run and args.date:
                run = app.journal.get_run(args.run)
                if run is not None and run["business_date"] != args.date:
                    raise UsageError(f"run {args.run} is of business date {run['business_date']}, not {args.date}")
            try:  # one reconciliation per flow (DATE_RECONCILERS), each its own section
                results = reconcile_date(
                    app, actor=nightly.operator_name(args), business_date=args.date, run_id=args.run
                )
            except LookupError as exc:
                raise UsageError(str(exc)) from exc
        documents = [
            {
                "kind": r.kind,
                "id": str(r.id),
                **r.figures(),
                "checked": r.checked,
                "breaks": [b.to_dict() for b in r.breaks],
            }
            for r in results
        ]
        if args.format == "json":  # one flow: its document as before; several: a list of them
            print(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2, default=str))
        else:
            for result in results:
                for line in reconciliation_lines(result):
                    print(line)
        return ExitCode.OK if all(r.clean for r in results) else ExitCode.ATTENTION

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
    **nightly.commands(_with_app),
    "migrate": cmd_migrate,
    **listings.commands(_with_app),
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
