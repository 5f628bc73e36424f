"""Render a Report as text, JSON, CSV and HTML. Pure functions of the Report: no database, no clock.

- text: the summary printed on stdout (template ``report.txt.j2``): counts and amounts by outcome,
  currency and group, the reconciliation, checks, every exception and the full audit head.
- json: the machine format; its schema is documented in docs/report-schema.md (``schema_version``).
- csv:  one row per line for spreadsheets (UTF-8 with BOM, CRLF, formula-safe).
- html: one self-contained page for people (template ``report.html.j2``), full width, printable on A4.

The templates ship in the package and a bank may override them (``[report] template_dir``; see
``batch.service.reports.view``). ``write`` renders any format; ``WRITERS`` and ``RENDERERS`` keep the
shipped templates.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from batch.service.reports.deposits import DEPOSIT_BUCKETS, DepositSection
from batch.service.reports.model import BUCKETS, GROUPS, SCHEMA_VERSION, STAMPS, Line, Report
from batch.service.reports.view import write_template

# -- JSON ----------------------------------------------------------------------------------------------


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _head(report: Report) -> dict[str, Any]:
    """The JSON document without its lines (docs/report-schema.md); values still typed."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": report.kind,
        "dry_run": report.dry_run,
        "business_date": report.business_date,
        "as_of": report.as_of,
        "generated_at": report.generated_at,
        "software_version": report.software_version,
        "runs": report.runs,
        "totals": {
            ccy: {
                "candidates": t.candidates,
                "requested": t.requested,
                **{b: {"count": t.count[b], "amount": t.amount[b]} for b in BUCKETS},
                "ledger_posted": t.ledger_posted,
                "investsuite_settled": t.investsuite_settled,
                "events_sent": t.events_sent,
                "moved": t.moved,
                "reconciliation_breaks": t.reconciliation_breaks,
                "groups": {
                    g: {
                        "lines": gt.lines,
                        "requested": gt.requested,
                        **{b: {"count": gt.count[b], "amount": gt.amount[b]} for b in BUCKETS},
                        "still_held": {"count": gt.still_held_count, "amount": gt.still_held_amount},
                        "moved": {"count": gt.moved_count, "amount": gt.moved_amount},
                    }
                    for g in GROUPS
                    if (gt := t.groups.get(g)) is not None
                },
            }
            for ccy, t in report.totals.items()
        },
        "checks": [{"name": c.name, "currency": c.currency, "ok": c.ok, "detail": c.detail} for c in report.checks],
        "reconcile": report.reconcile,
        "deposits": _section_totals(report.deposits),
        "announcements": _section_totals(report.announcements),
        "audit": report.audit,
    }


def _section_totals(section: DepositSection | None) -> dict[str, Any] | None:
    if section is None:
        return None
    return {
        "totals": {
            ccy: {b: {"count": t.count[b], "amount": t.amount[b]} for b in DEPOSIT_BUCKETS}
            | {"credits": t.credits, "received": t.received}
            for ccy, t in section.totals.items()
        },
    }


def _ordered_lines(report: Report) -> Iterator[Line]:
    """Exceptions first, then every other line by group, run and portfolio (streamed)."""
    yield from report.exceptions
    yield from (line for line in _by_run_and_portfolio(report) if not line.is_exception)


def _by_run_and_portfolio(report: Report) -> Iterable[Line]:
    # streamed lines come ordered from the journal; a loaded list may have been edited, so sort it
    if report.all_lines.loaded:
        rank = {g: i for i, g in enumerate(GROUPS)}
        return sorted(report.lines, key=lambda x: (rank.get(x.group, 9), x.run_id, x.portfolio_id))
    return report.all_lines


def write_json(report: Report, out: TextIO) -> None:
    """Stream the JSON document: the head, then one line object at a time."""
    head = json.dumps(_head(report), indent=2, default=_default)
    out.write(head[: head.rindex("}")].rstrip() + ',\n  "lines": [')
    for index, line in enumerate(_ordered_lines(report)):
        out.write(("\n    " if index == 0 else ",\n    ") + json.dumps(vars(line), default=_default))
    for name, section in (("deposit_lines", report.deposits), ("announcement_lines", report.announcements)):
        out.write(f'\n  ],\n  "{name}": [')
        for index, flow_line in enumerate(section.lines if section else ()):
            out.write(("\n    " if index == 0 else ",\n    ") + json.dumps(vars(flow_line), default=_default))
    out.write("\n  ]\n}\n")


# -- CSV -----------------------------------------------------------------------------------------------

STEP_COLUMNS = tuple(STAMPS)  # ledger_posted_at ... completed_at
CSV_COLUMNS = (
    "run_id",
    "portfolio_id",
    "decision",
    "reason",
    "outcome",
    "currency",
    "requested_raw",
    "requested",
    "ledger_available",
    "investsuite_cash",
    "paid",
    "reconciliation_break",
    "payout_id",
    "payout_state",
    "ledger_reference",
    "transaction_id",
    *STEP_COLUMNS,
    "group",
    "still_held",
    "moved",
    "failing_step",
    "last_error",
    "note",
)
#: Columns holding a Decimal we formatted ourselves: a leading "-" there is a sign, not a formula.
NUMERIC_COLUMNS = frozenset({"requested", "ledger_available", "investsuite_cash", "paid"})
#: A spreadsheet treats a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
#: Excel reads a CSV as the ANSI code page unless it starts with a byte order mark; LibreOffice
#: and Python's csv module (encoding="utf-8-sig") read the BOM as "UTF-8" too.
BOM = "\ufeff"


def _cell(column: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    text = str(value)
    if column not in NUMERIC_COLUMNS and text.startswith(FORMULA_TRIGGERS):
        return "'" + text
    return text


def csv_row(line: Line) -> dict[str, str]:
    """One CSV row (column -> cell text) for a line."""
    values: dict[str, object] = {c: getattr(line, c) for c in CSV_COLUMNS if c not in STEP_COLUMNS}
    for stamp in STEP_COLUMNS:
        values[stamp] = line.steps.get(stamp.removesuffix("_at"))
    return {c: _cell(c, values[c]) for c in CSV_COLUMNS}


def write_csv(report: Report, out: TextIO) -> None:
    out.write(BOM)
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writeheader()
    for line in _by_run_and_portfolio(report):
        writer.writerow(csv_row(line))


# -- text and HTML (templates) ---------------------------------------------------------------------------


def write_text(report: Report, out: TextIO, template_dir: Path | None = None) -> None:
    write_template(report, "report.txt.j2", out, template_dir)


def write_html(report: Report, out: TextIO, template_dir: Path | None = None) -> None:
    write_template(report, "report.html.j2", out, template_dir)


# -- dispatch ---------------------------------------------------------------------------------------------

Writer = Callable[[Report, TextIO], None]

#: Streaming writers by format, with the shipped templates.
WRITERS: dict[str, Writer] = {
    "json": write_json,
    "text": write_text,
    "csv": write_csv,
    "html": write_html,
}
EXTENSIONS = {"json": "json", "text": "txt", "csv": "csv", "html": "html"}


def write(report: Report, fmt: str, out: TextIO, *, template_dir: Path | None = None) -> None:
    """Render ``report`` as ``fmt`` to ``out``; text and HTML through the bank's templates when given."""
    if fmt == "text":
        write_text(report, out, template_dir)
    elif fmt == "html":
        write_html(report, out, template_dir)
    else:
        WRITERS[fmt](report, out)


def render(report: Report, fmt: str, *, template_dir: Path | None = None) -> str:
    buffer = io.StringIO()
    write(report, fmt, buffer, template_dir=template_dir)
    return buffer.getvalue()


def render_json(report: Report) -> str:
    return render(report, "json")


def render_text(report: Report, template_dir: Path | None = None) -> str:
    return render(report, "text", template_dir=template_dir)


def render_csv(report: Report) -> str:
    return render(report, "csv")


def render_html(report: Report, template_dir: Path | None = None) -> str:
    return render(report, "html", template_dir=template_dir)


#: The same formats rendered to a string (small reports, tests).
RENDERERS: dict[str, Callable[[Report], str]] = {
    "json": render_json,
    "text": render_text,
    "csv": render_csv,
    "html": render_html,
}
