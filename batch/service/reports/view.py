"""The report as the HTML and text templates see it: Jinja2 environment, filters and the view's figures.

Templates ship in the package (``batch/templates``); a bank's folder (``[report] template_dir``) comes
first, so a file there of the same name replaces the shipped one. The shipped ``report.html.j2`` and
``report.txt.j2`` only extend ``report_base.*.j2``: a bank's version extends the base too and overrides
the blocks it wants (``docs/report-schema.md`` lists them). Output is streamed: the full list of lines
is iterated once, never held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import jinja2
from markupsafe import Markup, escape

from batch.service.reports.deposits import DEPOSIT_BUCKETS
from batch.service.reports.model import BUCKETS, GROUP_TITLES, GROUPS, SCHEMA_VERSION, Line, Report

EXCEPTION_GROUPS = (
    ("held", "Held: new (waiting for an operator's approval or a fix of the data)"),
    ("still_held", "Still held (unchanged since the previous run; not an alarm by itself)"),
    ("needs_attention", "Needs attention (stopped at a step; see the error)"),
    ("in_progress", "In progress (not completed by the report's cut-off)"),
)
STEP_LABELS = {
    "ledger_posted": "ledger",
    "transaction_recorded": "txn",
    "divest_cleared": "divest",
    "holdings_updated": "holdings",
    "event_sent": "event",
    "completed": "done",
}
PAID_SOURCES = (
    ("journal", "Journal: paid (COMPLETED)"),
    ("ledger", "Ledger: transfers read back"),
    ("investsuite", "InvestSuite: SETTLED, read back"),
    ("events", "InvestSuite: event ids kept"),
)


def text(value: object) -> str:
    """Plain text of a value ("" for None, Decimals in plain notation, times to the second)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def code(value: object) -> Markup:
    """An escaped reason/state code that may wrap after its underscores (NO_LEDGER_ACCOUNT)."""
    return Markup(str(escape(text(value))).replace("_", "_<wbr>"))  # noqa: S704 - escaped first


def steps_html(line: Line, day: str) -> Markup:
    """Each reached step's time (UTC), with its date only when it is not ``day``."""
    parts = []
    for step, label in STEP_LABELS.items():
        stamp = line.steps.get(step)
        if stamp:
            moment = datetime.fromisoformat(stamp).astimezone(UTC)
            shown = f"{moment:%H:%M:%S}" if moment.date().isoformat() == day else f"{moment:%Y-%m-%d %H:%M:%S}"
            parts.append(f"{label} {shown}")
    return Markup("<br>").join(parts)


@cache
def _environment(template_dir: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if template_dir:
        loaders.append(jinja2.FileSystemLoader(template_dir))
    loaders.append(jinja2.PackageLoader("batch", "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["t"] = text
    env.filters["code"] = code
    return env


def write_template(report: Report, name: str, out: TextIO, template_dir: Path | None = None) -> None:
    """Render ``name`` (``report.html.j2`` or ``report.txt.j2``) for the report, streamed to ``out``."""
    if template_dir is not None and not template_dir.is_dir():
        raise FileNotFoundError(f"[report] template_dir {template_dir} is not a folder")
    template = _environment(str(template_dir) if template_dir else None).get_template(name)
    for chunk in template.generate(**context(report)):
        out.write(chunk)


def context(report: Report) -> dict[str, Any]:
    """Everything the templates use, computed once (the full line list stays a stream)."""
    audit = report.audit
    exceptions = {kind: [x for x in report.exceptions if x.exception_kind == kind] for kind, _ in EXCEPTION_GROUPS}
    alarm_checks = [c for c in report.checks if not c.ok]
    started = report.runs[0]["started_at"]
    day = started.astimezone(UTC).date().isoformat() if isinstance(started, datetime) else str(report.business_date)
    return {
        "report": report,
        "schema_version": SCHEMA_VERSION,
        "dry_run": report.dry_run,
        "verdict": _verdict(report, alarm_checks),
        "ok": not alarm_checks and bool(audit.get("verified")),
        "audit": audit,
        "buckets": BUCKETS,
        "groups": [(g, GROUP_TITLES[g]) for g in GROUPS],
        "exception_groups": [(kind, title, exceptions[kind]) for kind, title in EXCEPTION_GROUPS],
        "deposit_buckets": DEPOSIT_BUCKETS,
        "exception_counts": {kind: len(exceptions[kind]) for kind, _ in EXCEPTION_GROUPS},
        "paid_sources": PAID_SOURCES,
        "reconcile": report.reconcile,
        "recon_figures": (report.reconcile or {}).get("figures", {}).get("currencies", {}),
        "recon_breaks": (report.reconcile or {}).get("break_list", []),
        "several_runs": len(report.runs) > 1,
        "day": day,
        "lines": _ordered(report),
        "steps_html": steps_html,
        "step_labels": STEP_LABELS,
    }


def _verdict(report: Report, failed: list[Any]) -> str:
    summary = f"{report.candidates} lines, {report.exceptions_count} exceptions"
    if report.dry_run:
        count = sum(t.count["would_pay"] for t in report.totals.values())
        return f"DRY RUN: nothing was paid; {count} payouts would be paid. {summary}."
    if not failed and report.audit.get("verified"):
        return f"All {len(report.checks)} control checks PASS; audit chain verified. {summary}."
    parts = [
        f"{len(failed)} control check(s) FAIL" if failed else "",
        "" if report.audit.get("verified") else "audit chain BROKEN",
    ]
    return "ATTENTION: " + "; ".join(p for p in parts if p) + f". {summary}."


def _ordered(report: Report) -> Iterator[Line]:
    """By group, then run and portfolio (streamed lines come ordered; a loaded list may have been edited)."""
    if report.all_lines.loaded:
        rank = {g: i for i, g in enumerate(GROUPS)}
        yield from sorted(report.lines, key=lambda x: (rank.get(x.group, 9), x.run_id, x.portfolio_id))
    else:
        yield from report.all_lines
