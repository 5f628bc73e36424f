"""Render a Report as text, JSON, CSV and HTML. Pure functions of the Report."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from batch.service.report import BUCKETS, Report


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def to_dict(report: Report) -> dict[str, Any]:
    return {
        "schema_version": "1.0",
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
        "lines": [vars(line) for line in report.lines],
    }


def render_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, default=_default, sort_keys=False) + "\n"


def render_text(report: Report) -> str:
    out = [report.title]
    for run in report.runs:
        out.append(
            f"  run {run['id']}  {run['status']}  exit {run['exit_code']}  trigger {run['trigger']}"
            f"  operator {run['operator']}{'  DRY RUN' if run['dry_run'] else ''}"
        )
    out.append(f"  {report.candidates} candidates, {report.exceptions_count} exceptions")
    out.append("")
    header = f"  {'ccy':<4} {'bucket':<12} {'count':>7} {'amount':>18}"
    out.append(header)
    for ccy, t in report.totals.items():
        for b in BUCKETS:
            if t.count[b]:
                out.append(f"  {ccy:<4} {b:<12} {t.count[b]:>7} {t.amount[b]:>18}")
        out.append(f"  {ccy:<4} {'requested':<12} {t.candidates:>7} {t.requested:>18}")
    out.append("")
    for check in report.checks:
        out.append(f"  [{'PASS' if check.ok else 'FAIL'}] {check.currency} {check.name}: {check.detail}")
    audit = report.audit
    out.append(
        f"  audit chain: {'verified' if audit['verified'] else 'BROKEN at ' + str(audit['first_broken_seq'])}"
        f", {audit['rows']} rows, head {audit['head_seq']}:{audit['head_hash'][:16]}"
    )
    return "\n".join(out) + "\n"


RENDERERS: dict[str, Callable[[Report], str]] = {"json": render_json, "text": render_text}
EXTENSIONS = {"json": "json", "text": "txt", "csv": "csv", "html": "html"}
