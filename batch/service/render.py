"""Render a Report as text, JSON, CSV and HTML. Pure functions of the Report: no I/O, no clock.

- text: the short summary printed on stdout (counts and amounts by outcome and currency).
- json: the machine format; its schema is documented in docs/report-schema.md (``schema_version``).
- csv:  one row per candidate portfolio for spreadsheets (UTF-8 with BOM, CRLF, formula-safe).
- html: one self-contained page for people, printable on A4 (inline CSS, no scripts, no links).

``RENDERERS`` maps a format name to its renderer and ``EXTENSIONS`` to its file extension; both
``write_reports`` and ``batch report`` go through them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from html import escape
from typing import Any, TextIO

from batch.service.report import BUCKETS, SCHEMA_VERSION, STAMPS, Line, Report

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
                "reconciliation_breaks": t.reconciliation_breaks,
            }
            for ccy, t in report.totals.items()
        },
        "checks": [{"name": c.name, "currency": c.currency, "ok": c.ok, "detail": c.detail} for c in report.checks],
        "audit": report.audit,
    }


def _ordered_lines(report: Report) -> Iterator[Line]:
    """Exceptions first, then every other line by run and portfolio (streamed)."""
    yield from report.exceptions
    yield from (line for line in _by_run_and_portfolio(report) if not line.is_exception)


def _by_run_and_portfolio(report: Report) -> Iterable[Line]:
    # streamed lines come ordered from the journal; a loaded list may have been edited, so sort it
    if report.all_lines.loaded:
        return sorted(report.lines, key=lambda x: (x.run_id, x.portfolio_id))
    return report.all_lines


def write_json(report: Report, out: TextIO) -> None:
    """Stream the JSON document: the head, then one line object at a time."""
    head = json.dumps(_head(report), indent=2, default=_default)
    out.write(head[: head.rindex("}")].rstrip() + ',\n  "lines": [')
    for index, line in enumerate(_ordered_lines(report)):
        out.write(("\n    " if index == 0 else ",\n    ") + json.dumps(vars(line), default=_default))
    out.write("\n  ]\n}\n")


def render_json(report: Report) -> str:
    return _to_text(write_json, report)


# -- text ----------------------------------------------------------------------------------------------


def _exception_kind(line: Line) -> str:
    """Which exception group a line belongs to: held, needs_attention or in_progress."""
    if line.payout_state == "NEEDS_ATTENTION":
        return "needs_attention"
    if line.payout_state == "HELD" or (line.decision == "HOLD" and line.payout_id is None):
        return "held"
    return "in_progress"


EXCEPTION_GROUPS = (
    ("held", "Held (waiting for an operator's approval or a fix of the data)"),
    ("needs_attention", "Needs attention (stopped at a step; see the error)"),
    ("in_progress", "In progress (not completed by the report's cut-off)"),
)


def write_text(report: Report, out: TextIO) -> None:
    out.write(render_text(report))


def render_text(report: Report) -> str:
    out = [report.title]
    for run in report.runs:
        out.append(
            f"  run {run['id']}  {run['status']}  exit {run['exit_code']}  trigger {run['trigger']}"
            f"  operator {run['operator']}{'  DRY RUN' if run['dry_run'] else ''}"
        )
    out.append(f"  as of {report.as_of.isoformat()}")
    kinds = [_exception_kind(line) for line in report.exceptions]
    breakdown = ", ".join(f"{kind.replace('_', ' ')} {kinds.count(kind)}" for kind, _ in EXCEPTION_GROUPS)
    out.append(f"  {report.candidates} candidates, {report.exceptions_count} exceptions ({breakdown})")
    out.append("")
    out.append(f"  {'ccy':<4} {'bucket':<12} {'count':>7} {'amount':>18}")
    for ccy, t in report.totals.items():
        for b in BUCKETS:
            if t.count[b]:
                out.append(f"  {ccy:<4} {b:<12} {t.count[b]:>7} {t.amount[b]:>18}")
        out.append(f"  {ccy:<4} {'requested':<12} {t.candidates:>7} {t.requested:>18}")
        if t.reconciliation_breaks:
            out.append(f"  {ccy:<4} {'recon breaks':<12} {t.reconciliation_breaks:>7}")
    out.append("")
    for check in report.checks:
        out.append(f"  [{'PASS' if check.ok else 'FAIL'}] {check.currency} {check.name}: {check.detail}")
    audit = report.audit
    out.append(
        f"  audit chain: {'verified' if audit['verified'] else 'BROKEN at ' + str(audit['first_broken_seq'])}"
        f", {audit['rows']} rows, head {audit['head_seq']}:{audit['head_hash'][:16]}"
    )
    return "\n".join(out) + "\n"


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


def render_csv(report: Report) -> str:
    return _to_text(write_csv, report)


# -- HTML ----------------------------------------------------------------------------------------------

_CSS = """
@page { size: A4; margin: 14mm 10mm 16mm 10mm; }
* { box-sizing: border-box; }
body { font: 9.5pt/1.35 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #111; margin: 0 auto;
       max-width: 190mm; padding: 6mm 0; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
h1 { font-size: 15pt; margin: 0 0 2mm; }
h2 { font-size: 11.5pt; margin: 6mm 0 2mm; padding-bottom: 1mm; border-bottom: 1.5px solid #333;
     break-after: avoid; page-break-after: avoid; }
h3 { font-size: 10pt; margin: 4mm 0 1.5mm; break-after: avoid; page-break-after: avoid; }
p { margin: 1mm 0; }
table { border-collapse: collapse; width: 100%; margin: 1mm 0 3mm; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
th, td { border: 0.5pt solid #999; padding: 1mm 1.4mm; text-align: left; vertical-align: top; }
th { background: #e8e8e8; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.id { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 7.5pt; word-break: break-all; }
table.header th { width: 38mm; background: #f2f2f2; }
caption { text-align: left; font-weight: 700; padding: 1mm 0; }
table.totals { font-size: 8.5pt; }
table.lines { font-size: 7.5pt; }
table.lines th, table.lines td { padding: 0.6mm 1mm; }
.id, .note { overflow-wrap: anywhere; }
.pass { background: #d9f2dd; color: #0b5d1e; font-weight: 700; }
.fail { background: #f9d6d5; color: #9b1c1c; font-weight: 700; }
.banner { border: 1.5px solid; padding: 2mm 3mm; margin: 3mm 0; font-weight: 600; }
.banner.pass { border-color: #0b5d1e; }
.banner.fail { border-color: #9b1c1c; }
.muted { color: #555; }
.steps { white-space: nowrap; font-size: 7pt; }
.page-break { break-before: page; page-break-before: always; }
footer { margin-top: 6mm; font-size: 8pt; color: #555; border-top: 0.5pt solid #999; padding-top: 1.5mm; }
@media screen { body { padding: 8mm; } }
"""

_STEP_LABELS = {
    "ledger_posted": "ledger",
    "transaction_recorded": "txn",
    "divest_cleared": "divest",
    "holdings_updated": "holdings",
    "event_sent": "event",
    "completed": "done",
}


def _code(value: object) -> str:
    """An escaped reason/state code that may wrap after its underscores (NO_LEDGER_ACCOUNT)."""
    return _e(value).replace("_", "_<wbr>")


def _e(value: object) -> str:
    """HTML-escaped text of a value ("" for None, Decimals in plain notation)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return escape(value.isoformat(sep=" ", timespec="seconds"))
    return escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Iterable[int] = (), cls: str = "") -> str:
    """A table; ``rows`` are already-escaped cell HTML; ``numeric`` are right-aligned column indexes."""
    right = set(numeric)
    head = "".join(f'<th class="num">{h}</th>' if i in right else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in right else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _status(ok: bool) -> str:
    return '<span class="pass">PASS</span>' if ok else '<span class="fail">FAIL</span>'


def _steps_html(line: Line, day: str) -> str:
    """Each reached step's time (UTC), with its date only when it is not ``day``."""
    parts = []
    for step, label in _STEP_LABELS.items():
        stamp = line.steps.get(step)
        if stamp:
            moment = datetime.fromisoformat(stamp).astimezone(UTC)
            shown = f"{moment:%H:%M:%S}" if moment.date().isoformat() == day else f"{moment:%Y-%m-%d %H:%M:%S}"
            parts.append(f"{label} {_e(shown)}")
    return '<span class="steps">' + "<br>".join(parts) + "</span>" if parts else ""


def _key_values(rows: Iterable[tuple[str, str]], caption: str = "") -> str:
    """A two-column table of label and (already escaped) value."""
    head = f"<caption>{caption}</caption>" if caption else ""
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="header">{head}<tbody>{body}</tbody></table>'


def _header_html(report: Report) -> str:
    """The report's own header, then one block per run (id, trigger, operator, version, digest, times)."""
    out = [
        _key_values(
            [
                ("Report", _e("one run" if report.kind == "run" else f"all runs of the date ({len(report.runs)})")),
                ("Business date", _e(report.business_date)),
                ("Figures as of", _e(report.as_of) + ' <span class="muted">(payout states at this time)</span>'),
                ("Generated", _e(report.generated_at) + f" by version {_e(report.software_version)}"),
            ]
        )
    ]
    for number, run in enumerate(report.runs, start=1):
        rows = [
            ("Run id", f'<span class="id">{_e(run["id"])}</span>'),
            ("Trigger / operator", f"{_e(run['trigger'])} / {_e(run['operator'])}"),
            (
                "Status / exit code",
                f"{_e(run['status'])} / {_e(run['exit_code'])}" + (" (DRY RUN)" if run["dry_run"] else ""),
            ),
            ("Software version", _e(run["software_version"])),
            ("Config digest", f'<span class="id">{_e(run["config_digest"])}</span>'),
            ("Host", _e(run["host"])),
            ("Start / end", f"{_e(run['started_at'])} / {_e(run['finished_at'])}"),
        ]
        if run["error"]:
            rows.append(("Error", f'<span class="fail">{_e(run["error"])}</span>'))
        caption = f"Run {number} of {len(report.runs)}" if len(report.runs) > 1 else ""
        out.append(_key_values(rows, caption))
    return "".join(out)


def _totals_html(report: Report) -> str:
    headers = ["Ccy", "Candidates", "Requested", *(b.replace("_", " ").capitalize() for b in BUCKETS), "Breaks"]
    rows = []
    for ccy, t in report.totals.items():
        rows.append(
            [
                _e(ccy),
                _e(t.candidates),
                _e(t.requested),
                *(f"{_e(t.amount[b])}<br><span class='muted'>{t.count[b]}</span>" for b in BUCKETS),
                _e(t.reconciliation_breaks),
            ]
        )
    totals = _table(headers, rows, numeric=range(1, len(headers)), cls="totals")
    paid_rows = [
        [_e(ccy), _e(t.amount["paid"]), _e(t.ledger_posted), _e(t.investsuite_settled), _e(t.events_sent)]
        for ccy, t in report.totals.items()
    ]
    paid = _table(
        ["Ccy", "Paid", "Ledger posted", "InvestSuite SETTLED", "Withdraw events"], paid_rows, numeric=range(1, 5)
    )
    checks = _table(
        ["Check", "Ccy", "Result", "Figures"],
        [[_e(c.name), _e(c.currency), _status(c.ok), _e(c.detail)] for c in report.checks],
    )
    return (
        "<h2>Control totals per currency</h2>"
        '<p class="muted">Amount per outcome, with the number of candidates below it. '
        "Requested is the journal's own sum of the candidates' payable requests.</p>"
        f"{totals}<h3>Paid, everywhere once</h3>{paid}<h3>Checks</h3>{checks}"
    )


def _exceptions_html(report: Report) -> str:
    groups: dict[str, list[Line]] = {kind: [] for kind, _ in EXCEPTION_GROUPS}
    for line in report.exceptions:
        groups[_exception_kind(line)].append(line)
    out = [f"<h2>Exceptions ({report.exceptions_count})</h2>"]
    headers = ["Portfolio", "Decision / reason", "State", "Ccy", "Requested", "Failing step", "Error / note", "Payout"]
    for kind, title in EXCEPTION_GROUPS:
        lines = groups[kind]
        out.append(f"<h3>{_e(title)}: {len(lines)}</h3>")
        rows = [
            [
                f'<span class="id">{_e(x.portfolio_id)}</span>',
                f"{_e(x.decision)} / {_code(x.reason)}",
                _e(x.payout_state),
                _e(x.currency),
                _e(x.requested),
                _e(x.failing_step),
                '<span class="note">' + "<br>".join(_e(v) for v in (x.last_error, x.note) if v) + "</span>",
                f'<span class="id">{_e(x.payout_id)}</span>',
            ]
            for x in lines
        ]
        out.append(_table(headers, rows, numeric=[4], cls="lines"))
    return "".join(out)


def _breaks_html(report: Report) -> str:
    breaks = report.breaks
    rows = [
        [
            f'<span class="id">{_e(x.portfolio_id)}</span>',
            _e(x.currency),
            _e(x.ledger_available),
            _e(x.investsuite_cash),
            _e(x.ledger_available - x.investsuite_cash)
            if x.ledger_available is not None and x.investsuite_cash is not None
            else "",
            _e(x.requested),
            f"{_e(x.decision)} / {_e(x.reason)}",
            _e(x.note),
        ]
        for x in breaks
    ]
    headers = [
        "Portfolio",
        "Ccy",
        "Ledger available",
        "InvestSuite cash",
        "Difference",
        "Requested",
        "Decision",
        "Note",
    ]
    return f"<h2>Reconciliation breaks ({len(breaks)})</h2>" + _table(headers, rows, numeric=[2, 3, 4, 5], cls="lines")


def _write_lines_html(report: Report, out: TextIO) -> None:
    """The full list, one row at a time (a book of 100,000 lines is never held in memory)."""
    several = len(report.runs) > 1
    started = report.runs[0]["started_at"]
    day = started.astimezone(UTC).date().isoformat() if isinstance(started, datetime) else str(report.business_date)
    headers = [
        *(["Run"] if several else []),
        "Portfolio",
        "Decision / reason",
        "Outcome / state",
        "Requested / paid",
        "Ledger ref / transaction",
        f"Steps (UTC, {_e(day)} unless dated)",
        "Error / note",
    ]
    numeric = 3 + (1 if several else 0)
    head = "".join(f'<th class="num">{h}</th>' if i == numeric else f"<th>{h}</th>" for i, h in enumerate(headers))
    out.write(f'<h2 class="page-break">All candidate portfolios ({report.candidates})</h2>')
    out.write(f'<table class="lines"><thead><tr>{head}</tr></thead><tbody>')
    for x in _by_run_and_portfolio(report):
        amounts = f"{_e(x.requested)} {_e(x.currency)}" + (f"<br>paid {_e(x.paid)}" if x.paid is not None else "")
        cells = [
            *([f'<span class="id">{_e(x.run_id[:8])}</span>'] if several else []),
            f'<span class="id">{_e(x.portfolio_id)}</span>',
            f"{_e(x.decision)}<br>{_code(x.reason)}",
            _e(x.outcome) + (f"<br>{_code(x.payout_state)}" if x.payout_state else ""),
            amounts,
            "<br>".join(f'<span class="id">{_e(v)}</span>' for v in (x.ledger_reference, x.transaction_id) if v),
            _steps_html(x, day),
            '<span class="note">' + "<br>".join(_e(v) for v in (x.last_error, x.note) if v) + "</span>",
        ]
        row = "".join(f'<td class="num">{c}</td>' if i == numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        out.write(f"<tr>{row}</tr>")
    if not report.candidates:
        out.write(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
    out.write("</tbody></table>")


def _audit_html(report: Report) -> str:
    audit = report.audit
    ok = bool(audit["verified"])
    rows = [
        ("Chain verified", _status(ok) + ("" if ok else f" first broken row: seq {_e(audit['first_broken_seq'])}")),
        ("Rows checked", _e(audit["rows"])),
        ("Head seq", _e(audit["head_seq"])),
        ("Head hash", f'<span class="id">{_e(audit["head_hash"])}</span>'),
    ]
    if audit.get("problem"):
        rows.append(("Problem", _e(audit["problem"])))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (
        "<h2>Audit chain</h2>"
        '<p class="muted">Verified when the report was generated; compare the head with the copy '
        "anchored outside the database (<code>batch audit head</code>).</p>"
        f'<table class="header"><tbody>{body}</tbody></table>'
    )


def write_html(report: Report, out: TextIO) -> None:
    ok = report.checks_ok and bool(report.audit["verified"])
    verdict = (
        f"All {len(report.checks)} control checks PASS; audit chain verified"
        if ok
        else "ATTENTION: "
        + "; ".join(
            part
            for part in (
                f"{sum(not c.ok for c in report.checks)} control check(s) FAIL" if not report.checks_ok else "",
                "audit chain BROKEN" if not report.audit["verified"] else "",
            )
            if part
        )
    )
    summary = f"{report.candidates} candidates, {report.exceptions_count} exceptions"
    out.write(
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(report.title)}</h1>"
        f"{_header_html(report)}"
        f'<div class="banner {"pass" if ok else "fail"}">{_e(verdict)}. {_e(summary)}.</div>'
        f"{_totals_html(report)}{_exceptions_html(report)}{_breaks_html(report)}{_audit_html(report)}"
    )
    _write_lines_html(report, out)
    out.write(
        f"<footer>Report schema {_e(SCHEMA_VERSION)}. Rendered from the job's journal alone; figures are the "
        f"payout states as of {_e(report.as_of)} and do not change when the report is rendered again.</footer>"
        "</body></html>\n"
    )


def render_html(report: Report) -> str:
    return _to_text(write_html, report)


def _to_text(writer: Writer, report: Report) -> str:
    buffer = io.StringIO()
    writer(report, buffer)
    return buffer.getvalue()


Writer = Callable[[Report, TextIO], None]

#: Streaming writers by format: what ``write_reports`` and ``batch report`` use.
WRITERS: dict[str, Writer] = {"json": write_json, "text": write_text, "csv": write_csv, "html": write_html}
#: The same formats rendered to a string (small reports, tests).
RENDERERS: dict[str, Callable[[Report], str]] = {
    "json": render_json,
    "text": render_text,
    "csv": render_csv,
    "html": render_html,
}
EXTENSIONS = {"json": "json", "text": "txt", "csv": "csv", "html": "html"}
