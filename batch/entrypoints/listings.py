"""People's read-only commands: ``batch payouts``, ``batch runs`` and ``batch report``.

Listings page with ``--limit``/``--offset`` and say when they were cut. ``batch payouts --state held``
also lists the HOLD decisions that created no payout (bad data to fix), so that its figure is the
report's "held": held payouts plus held decisions.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batch.adapters.journal.listings import HeldDecision
from batch.bootstrap import App
from batch.domain.payout import OPEN_STATES, FlowKind, PayoutState
from batch.domain.records import PayoutRecord
from batch.entrypoints.console import (
    Column,
    amount_text,
    iso_date,
    paging_line,
    print_table,
    whole_number,
    writable_file,
)
from batch.entrypoints.oversight import WithApp
from batch.errors import UsageError
from batch.service.nightly.history import RUN_COLUMNS, history_row
from batch.service.nightly.run import ExitCode
from batch.settings import Settings

#: the most rows one page may ask for
MAX_LIMIT = 10_000
MAX_OFFSET = 1_000_000_000

STATE_CHOICES: dict[str, frozenset[PayoutState]] = {
    "open": OPEN_STATES,
    "needs-attention": frozenset({PayoutState.NEEDS_ATTENTION}),
    "held": frozenset({PayoutState.HELD}),
    "completed": frozenset({PayoutState.COMPLETED}),
    "cancelled": frozenset({PayoutState.CANCELLED}),
    "all": frozenset(PayoutState),
}

#: ``--flow``: which operations ``batch payouts`` lists (a deposit's announce-only operation is a deposit)
FLOW_CHOICES: dict[str, tuple[FlowKind, ...]] = {
    "all": tuple(FlowKind),
    "withdrawal": (FlowKind.WITHDRAWAL,),
    "deposit": (FlowKind.DEPOSIT, FlowKind.DEPOSIT_ANNOUNCE),
}
FLOW_LABEL = {FlowKind.WITHDRAWAL: "withdrawal", FlowKind.DEPOSIT: "deposit", FlowKind.DEPOSIT_ANNOUNCE: "deposit"}

PAYOUT_COLUMNS = (
    Column("payout id"),
    Column("flow"),
    Column("portfolio"),
    Column("state"),
    Column("amount", "right"),
    Column("ccy"),
    Column("date"),
    Column("step / reason", fold=True),
)
HELD_COLUMNS = (
    Column("portfolio"),
    Column("reason", fold=True),
    Column("amount", "right"),
    Column("ccy"),
    Column("run"),
    Column("date"),
)
RUN_TABLE = tuple(
    Column(name, "right" if name in ("exit", "secs") else "left", fold=name == "totals") for name in RUN_COLUMNS
)


def _paging(parser: Any, default_limit: int) -> None:
    parser.add_argument(
        "--limit", type=whole_number(1, MAX_LIMIT), default=default_limit, help=f"rows per page (1..{MAX_LIMIT:,})"
    )
    parser.add_argument("--offset", type=whole_number(0, MAX_OFFSET), default=0, help="rows to skip (paging)")


def add_parsers(sub: Any, run_id: Callable[[str], Any]) -> None:
    """The ``payouts``, ``report`` and ``runs`` sub-commands."""
    payouts = sub.add_parser("payouts", help="list payouts by state (held: and the HOLD decisions without a payout)")
    payouts.add_argument("--state", default="open", choices=list(STATE_CHOICES))
    payouts.add_argument("--flow", default="all", choices=list(FLOW_CHOICES), help="withdrawals, deposits or both")
    _paging(payouts, 200)

    report = sub.add_parser("report", help="render a run report")
    which = report.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", type=iso_date)
    which.add_argument("--run", type=run_id)
    report.add_argument("--format", choices=["text", "json", "csv", "html"], default="text")
    report.add_argument("-o", "--output", type=writable_file_arg, help="write to this file (its folder must exist)")

    runs = sub.add_parser("runs", help="run history, newest first")
    runs.add_argument("--date", type=iso_date)
    _paging(runs, 50)


def writable_file_arg(text: str) -> Path:
    """``-o FILE``: refused with one line when its folder does not exist."""
    try:
        return writable_file(Path(text))
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _payout_row(p: PayoutRecord) -> tuple[str, ...]:
    why = p.failing_step or p.hold_reason or ""
    if p.last_error:
        why += f": {' '.join(p.last_error.split())[:80]}"
    return (
        str(p.id),
        FLOW_LABEL[p.flow],
        p.portfolio_id,
        p.state.value,
        amount_text(p.amount, p.currency),
        p.currency,
        str(p.business_date),
        why,
    )


def _held_row(d: HeldDecision) -> tuple[str, ...]:
    return (
        d.portfolio_id,
        d.reason,
        amount_text(d.requested_amount, d.currency, d.requested_raw),
        d.currency or "-",
        str(d.run_id),
        str(d.business_date),
    )


def cmd_payouts(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    def go(app: App) -> int:
        journal = app.journal
        flows = FLOW_CHOICES[args.flow]
        page = journal.payouts_page(
            sorted(STATE_CHOICES[args.state]), limit=args.limit, offset=args.offset, flows=flows
        )
        print_table(PAYOUT_COLUMNS, [_payout_row(p) for p in page.items])
        print(paging_line(page, "payout"))
        if args.state == "held":
            held = journal.held_without_payout_page(limit=args.limit, offset=args.offset)
            print()
            print(
                f"held decisions without a payout ({held.total:,}; each portfolio's latest since the last full run):"
                " fix the data, the next run decides them again"
            )
            if held.items:
                print_table(HELD_COLUMNS, [_held_row(d) for d in held.items])
            print(paging_line(held, "held decision"))
            payouts = f"{page.total:,} HELD payout{'' if page.total == 1 else 's'} awaiting approval"
            decisions = f"{held.total:,} HOLD decision{'' if held.total == 1 else 's'} without a payout"
            print(f"held: {page.total + held.total:,} = {payouts} + {decisions} (the report's held)")
        return ExitCode.OK

    return with_app(settings, go)


def cmd_report(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    from batch.service.reports import render  # noqa: PLC0415
    from batch.service.reports.build import build_report  # noqa: PLC0415

    def go(app: App) -> int:
        try:
            report = build_report(app.journal_engine, run_id=args.run, business_date=args.date)
        except LookupError as exc:
            raise UsageError(str(exc)) from exc
        template_dir = settings.report.template_dir
        if args.output:
            try:
                out = args.output.open("w", encoding="utf-8", newline="")
            except OSError as exc:
                raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
            with out:
                render.write(report, args.format, out, template_dir=template_dir)
            print(f"wrote {args.output}")
        else:
            render.write(report, args.format, sys.stdout, template_dir=template_dir)
        return ExitCode.OK

    return with_app(settings, go)


def cmd_runs(settings: Settings, args: argparse.Namespace, with_app: WithApp) -> int:
    def go(app: App) -> int:
        page = app.journal.runs_page(business_date=args.date, limit=args.limit, offset=args.offset)
        print_table(RUN_TABLE, [history_row(r) for r in page.items])
        print(paging_line(page, "run"))
        return ExitCode.OK

    return with_app(settings, go)


def commands(with_app: WithApp) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    """The commands of this module, each run with the CLI's ``with_app``."""
    return {
        name: functools.partial(command, with_app=with_app)
        for name, command in (("payouts", cmd_payouts), ("report", cmd_report), ("runs", cmd_runs))
    }
