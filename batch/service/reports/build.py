"""Run reports: built from the journal, and the reconciliation recorded in it (the systems read back).

A report covers one run or every run of one business date. Payout states are taken *as of* the
report's cut-off (the run's end, or the last run's end for a date) from the per-state timestamps,
so a report rendered a month later shows the same figures. What each line and group means is in
``batch.service.reports.model``; the SQL is ``sql/queries/report.sql``.

- A run's report counts every payout whose money moved in that run (its step attempts tell which):
  tonight's candidates, and the payouts carried over, approved or retried that it drove.
- A date's report is the date's money: each portfolio's decision once (its latest of the date, earlier
  ones beneath), and every payout of the value date whose money moved, from any run (killed,
  interrupted, operator, listener): a portfolio paid twice shows both payouts (group ``paid_earlier``).
- The audit head printed is the one stored on the run's row at its end (the date's last run).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from batch.adapters.journal import Journal
from batch.adapters.sqlfiles import load_queries
from batch.service.reports import render
from batch.service.reports.checks import checks
from batch.service.reports.deposits import build_deposit_section
from batch.service.reports.figures import Check, quantized
from batch.service.reports.model import (
    BUCKETS,
    GROUPS,
    SCHEMA_VERSION,
    STAMPS,
    ZERO,
    Line,
    Lines,
    Report,
    Totals,
    bucket,
    state_as_of,
)

__all__ = [
    "BUCKETS",
    "GROUPS",
    "SCHEMA_VERSION",
    "STAMPS",
    "Check",
    "Line",
    "Report",
    "Totals",
    "audit_summary",
    "build_report",
    "run_header",
    "state_as_of",
    "write_reports",
]

Q = load_queries("report")


def build_report(
    engine: Engine,
    *,
    run_id: uuid.UUID | None = None,
    business_date: date | None = None,
    as_of_now: bool = False,
    include_dry_runs: bool = False,
    verify_audit: bool = True,
) -> Report:
    """Gather a report for one run or for all (non dry) runs of a business date.

    ``verify_audit=False`` leaves the audit block empty; fill it later with ``audit_summary``.
    """
    with engine.connect() as conn:
        if run_id is not None:
            runs = [dict(r._mapping) for r in conn.execute(Q.run_by_id.text, {"id": run_id})]
            if not runs:
                raise LookupError(f"no run {run_id}")
            kind = "run"
        else:
            assert business_date is not None
            runs = [
                dict(r._mapping)
                for r in conn.execute(Q.runs_of_date.text, {"d": business_date, "dry": include_dry_runs})
            ]
            if not runs:
                raise LookupError(f"no run for business date {business_date}")
            kind = "date"
        now = datetime.now(UTC)
        finished = [r["finished_at"] for r in runs if r["finished_at"] is not None]
        as_of = now if as_of_now or len(finished) < len(runs) else max(finished)
        if kind == "date" and as_of < now:
            # the date's money: a payout of the date that a later run (another date's, an operator's
            # retry) moved on is counted as of that movement, as the ledger's value date counts it
            moved = Journal(engine).latest_movement_of_date(runs[0]["business_date"], now)
            as_of = max(as_of, moved) if moved is not None else as_of
        run_ids = [r["id"] for r in runs]
        params: dict[str, Any] = {"run_id": run_ids[0], "runs": run_ids, "d": runs[0]["business_date"]}
        candidate_totals = conn.execute(
            (Q.candidate_totals_of_run if kind == "run" else Q.candidate_totals_of_date).text, params
        ).all()
        movement_totals = list(conn.execute(Q.movement_totals.text, params).all())
        if kind == "date":  # the date's money: every payout of the value date, not one per portfolio
            movement_totals += conn.execute(Q.earlier_payout_totals_of_date.text, params).all()
    line_queries = (
        (Q.candidate_lines_of_run, Q.movement_lines)
        if kind == "run"
        else (Q.candidate_lines_of_date, Q.earlier_payout_lines_of_date, Q.movement_lines)
    )

    def stream() -> Iterator[Line]:
        with engine.connect() as conn:
            for query in line_queries:
                rows = conn.execution_options(stream_results=True, yield_per=1000).execute(query.text, params)
                for row in rows:
                    yield _line(dict(row._mapping), as_of)

    # one streaming pass for the totals; only exceptions and reconciliation breaks are kept
    totals: dict[str, Totals] = {}
    exception_lines: list[Line] = []
    break_lines: list[Line] = []
    count = 0
    for line in stream():
        count += 1
        totals.setdefault(line.currency or "???", Totals()).add(line)
        if line.is_exception:
            exception_lines.append(line)
        if line.reconciliation_break:
            break_lines.append(line)
    totals = dict(sorted(totals.items()))
    for agg in [*candidate_totals, *movement_totals]:
        t = totals.setdefault(agg.ccy.strip(), Totals())
        t.requested += quantized(agg.requested, agg.ccy.strip()) or ZERO
        t.candidates += int(agg.n)
    for ccy, t in totals.items():
        t.at_minor_unit(ccy)
    journal = Journal(engine)
    reconcile = _reconcile(journal, runs, kind, as_of)
    dry_run = all(r["dry_run"] for r in runs)
    deposits = build_deposit_section(engine, run_ids)
    announcements = build_deposit_section(engine, run_ids, "announcements")
    report = Report(
        kind=kind,
        business_date=runs[0]["business_date"],
        runs=[run_header(r) for r in runs],
        as_of=as_of,
        lines=Lines(stream),
        totals=totals,
        checks=checks(totals, reconcile, dry_run, kind)
        + (deposits.checks() if deposits else [])
        + (announcements.checks() if announcements else []),
        audit={},
        generated_at=now,
        candidates=count,
        exception_lines=exception_lines,
        break_lines=break_lines,
        reconcile=reconcile,
        deposits=deposits,
        announcements=announcements,
    )
    if verify_audit:
        report.audit = audit_summary(engine, runs[-1])
    return report


def _reconcile(journal: Journal, runs: list[dict[str, Any]], kind: str, as_of: datetime) -> dict[str, Any] | None:
    """The recorded reconciliation: the run's own; for a date, the latest of the whole date (any time).

    ``stale_since``: the date's latest money movement by the report's cut-off, when the reconciliation
    finished before it (its checks then say "not reconciled since ..." instead of PASS).
    """
    if kind == "run":
        found = journal.reconciliation_of_run(runs[0]["id"])
        error = (runs[0].get("summary") or {}).get("reconcile_error")
        if found is None and error:
            return {"id": None, "checked": 0, "breaks": 0, "error": error, "figures": {}, "break_list": []}
    else:
        found = journal.reconciliation_of_date(runs[0]["business_date"])
    if found is None:
        return None
    # a reconciliation older than the date's latest money movement vouches for nothing after it
    moved = journal.latest_movement_of_date(runs[0]["business_date"], as_of)
    scope = ((found.get("figures") or {}).get("stats") or {}).get("scope")
    stale = moved is not None and moved > found["finished_at"] and (kind == "date" or scope == "date")
    return {
        "stale_since": moved.isoformat() if stale and moved is not None else None,
        "id": str(found["id"]),
        "kind": found["kind"],
        "run_id": str(found["run_id"]) if found["run_id"] else None,
        "operator": found["operator"],
        "started_at": found["started_at"],
        "finished_at": found["finished_at"],
        "checked": found["checked"],
        "breaks": found["breaks"],
        "error": None,
        "figures": found["figures"],
        "break_list": found["break_list"],
    }


def audit_summary(engine: Engine, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Verify the chain from its last checkpoint (recording a new one); the head printed is the one stored
    at the run's end (when there is a run).

    The stored head must be a row of the verified chain with the same hash; otherwise the chain is
    reported broken at that row.
    """
    journal = Journal(engine)
    verification = journal.verify_audit(since_checkpoint=True, record_checkpoint=True)
    summary: dict[str, Any] = {
        "verified": verification.ok,
        "rows": verification.rows,
        "head_seq": verification.head_seq,
        "head_hash": verification.head_hash,
        "head_source": "chain now",
        "chain_head_seq": verification.head_seq,
        "first_broken_seq": verification.first_broken_seq,
        "problem": verification.problem,
        "from_seq": verification.from_seq,
    }
    if run is not None and run.get("audit_head_seq") is not None:
        seq, stored = int(run["audit_head_seq"]), str(run["audit_head_hash"])
        summary |= {"head_seq": seq, "head_hash": stored, "head_source": "stored at the run's end"}
        with engine.connect() as conn:
            in_chain = conn.execute(Q.audit_hash_at.text, {"seq": seq}).scalar()
        if verification.ok and (seq > verification.head_seq or in_chain != stored):
            summary |= {
                "verified": False,
                "first_broken_seq": seq,
                "problem": "the head stored at the run's end is not in the chain (rewritten?)",
            }
    return summary


def run_header(run: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "business_date",
        "trigger",
        "operator",
        "status",
        "exit_code",
        "dry_run",
        "software_version",
        "config_digest",
        "host",
        "started_at",
        "finished_at",
        "error",
        "audit_head_seq",
        "audit_head_hash",
    )
    return {k: run.get(k) for k in keys}


def _line(row: Mapping[str, Any], as_of: datetime) -> Line:
    has_payout = row["payout_id"] is not None
    state = state_as_of(row, as_of) if has_payout else None
    ccy = row["currency"].strip() if row["currency"] else None
    steps = (
        {
            s.removesuffix("_at"): (row[s].isoformat() if row[s] is not None and row[s] <= as_of else None)
            for s in STAMPS
        }
        if has_payout
        else {}
    )
    details = row["details"] or {}
    decision = row["final_decision"] or row["decision"]
    return Line(
        run_id=str(row["run_id"]),
        portfolio_id=row["portfolio_id"],
        decision=decision,
        reason=row["final_reason"] or row["reason"],
        outcome=bucket(row["decision"], row["final_decision"], state, bool(row["dry_run"])),
        currency=ccy,
        requested_raw=row["requested_raw"],
        requested=quantized(row["requested_amount"], ccy),
        ledger_available=quantized(row["ledger_available"], ccy),
        investsuite_cash=quantized(row["investsuite_cash"], ccy),
        paid=quantized(row["amount"], ccy) if state == "COMPLETED" else None,
        reconciliation_break=row["reconciliation_break"],
        payout_id=str(row["payout_id"]) if has_payout else None,
        payout_state=state,
        ledger_reference=row["ledger_reference"] if steps.get("ledger_posted") else None,
        transaction_id=row["transaction_id"] if steps.get("transaction_recorded") else None,
        failing_step=row["failing_step"] if state == "NEEDS_ATTENTION" else None,
        last_error=row["last_error"] if state in ("NEEDS_ATTENTION", "CANCELLED") else None,
        note=_note(details, row, as_of),
        steps=steps,
        dry_run=bool(row["dry_run"]),
        group=row.get("line_group") or (_group(row, as_of) if row["movement"] else "planned"),
        still_held=bool(row["still_held"]),
        moved=bool(row["moved"]) and bool(steps.get("ledger_posted")),
        earlier=[_earlier(e) for e in row["earlier"] or []],
    )


def _group(row: Mapping[str, Any], as_of: datetime) -> str:
    """Which movement group a payout decided by another run falls in."""
    if row["approved_at"] is not None and row["approved_at"] <= as_of:
        return "approved"
    if row["retried_at"] is not None and row["retried_at"] <= as_of:
        return "retried"
    return "carried_over"


def _earlier(entry: Mapping[str, Any]) -> dict[str, Any]:
    requested = entry.get("requested")
    return {**entry, "requested": None if requested is None else format(Decimal(str(requested)), "f")}


def _note(details: Mapping[str, Any], row: Mapping[str, Any], as_of: datetime) -> str | None:
    """The decision's note, plus the operator's approval once it happened (by the report's cut-off)."""
    parts = [str(details[key]) for key in ("note", "execution_note") if details.get(key)]
    if row["approved_by"] and row["approved_at"] is not None and row["approved_at"] <= as_of:
        reason = f": {row['approval_reason']}" if row["approval_reason"] else ""
        parts.append(f"approved by {row['approved_by']} at {row['approved_at'].isoformat()}{reason}")
    return "; ".join(parts) or None


def write_reports(report: Report, folder: Path, template_dir: Path | None = None) -> dict[str, Path]:
    """Write the report in every format under ``folder``; return the paths by format."""

    folder.mkdir(parents=True, exist_ok=True)
    stem = (
        f"run-{report.business_date}-{report.runs[0]['id']}" if report.kind == "run" else f"date-{report.business_date}"
    )
    paths: dict[str, Path] = {}
    for fmt in render.WRITERS:
        path = folder / f"{stem}.{render.EXTENSIONS[fmt]}"
        with path.open("w", encoding="utf-8", newline="") as out:
            render.write(report, fmt, out, template_dir=template_dir)
        paths[fmt] = path
    return paths
