"""Run reports, rendered from the journal alone.

A report covers one run or every run of one business date. Payout states are taken *as of* the
report's cut-off (the run's end, or the last run's end for a date) from the per-state timestamps,
so a report rendered a month later shows the same figures.

Control totals per currency (amounts are the payable request of each candidate):
    requested = paid + in_progress + deferred + skipped + held      ("nothing lost")
    paid = ledger posted = InvestSuite SETTLED = withdraw events      ("paid once, everywhere")
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch import __version__
from batch.adapters.journal import Journal
from batch.domain.money import MINOR_UNITS

SCHEMA_VERSION = "1.0"
ZERO = Decimal(0)
BUCKETS = ("paid", "in_progress", "deferred", "skipped", "held")
STAMPS = (
    "ledger_posted_at",
    "transaction_recorded_at",
    "divest_cleared_at",
    "holdings_updated_at",
    "event_sent_at",
    "completed_at",
)
_STATE_OF_STAMP = {
    "ledger_posted_at": "LEDGER_POSTED",
    "transaction_recorded_at": "TRANSACTION_RECORDED",
    "divest_cleared_at": "DIVEST_CLEARED",
    "holdings_updated_at": "HOLDINGS_UPDATED",
    "event_sent_at": "EVENT_SENT",
    "completed_at": "COMPLETED",
}
EXCEPTION_STATES = {"NEEDS_ATTENTION", "HELD"}


def _q(amount: Decimal | None, currency: str | None) -> Decimal | None:
    """Display an amount with the currency's minor unit (journal NUMERIC carries 8 decimals)."""
    if amount is None:
        return None
    places = MINOR_UNITS.get(currency or "", 8)
    return amount.quantize(Decimal(1).scaleb(-places)) if places < 8 else amount.normalize()


def state_as_of(payout: Mapping[str, Any], as_of: datetime) -> str:
    """The payout's state at ``as_of`` from its timestamps (its current state if nothing is later)."""
    if payout["updated_at"] <= as_of:
        return str(payout["state"])
    forward = [(payout[s], _STATE_OF_STAMP[s]) for s in STAMPS if payout[s] is not None and payout[s] <= as_of]
    latest_forward = max(forward)[0] if forward else None
    stopped = payout["stopped_at"]
    if stopped is not None and stopped <= as_of and (latest_forward is None or stopped > latest_forward):
        return "CANCELLED" if payout["state"] == "CANCELLED" else "NEEDS_ATTENTION"
    if forward:
        return max(forward)[1]
    if payout["hold_reason"] and (payout["approved_at"] is None or payout["approved_at"] > as_of):
        return "HELD"
    return "PLANNED"


@dataclass
class Line:
    """One candidate portfolio in one run."""

    run_id: str
    portfolio_id: str
    decision: str
    reason: str
    outcome: str  # the bucket: paid / in_progress / deferred / skipped / held
    currency: str | None
    requested_raw: str | None
    requested: Decimal | None
    ledger_available: Decimal | None
    investsuite_cash: Decimal | None
    paid: Decimal | None
    reconciliation_break: bool
    payout_id: str | None = None
    payout_state: str | None = None
    ledger_reference: str | None = None
    transaction_id: str | None = None
    failing_step: str | None = None
    last_error: str | None = None
    note: str | None = None
    steps: dict[str, str | None] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def is_exception(self) -> bool:
        if self.dry_run and self.decision == "PAY":
            return False  # a dry run pays nothing: its PAY lines are what would be paid, not work in flight
        # a HOLD with a payout follows that payout once approved; a HOLD without one waits for a fix of the data
        held_without_payout = self.decision == "HOLD" and self.payout_id is None
        return self.payout_state in EXCEPTION_STATES or held_without_payout or self.outcome == "in_progress"


@dataclass
class Totals:
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    amount: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    ledger_posted: Decimal = ZERO
    investsuite_settled: Decimal = ZERO
    events_sent: Decimal = ZERO
    reconciliation_breaks: int = 0
    #: the journal's own aggregate of the candidates' requests (independent of the bucketing)
    requested: Decimal = ZERO
    candidates: int = 0


@dataclass(frozen=True)
class Check:
    name: str
    currency: str
    ok: bool
    detail: str


class Lines:
    """The report's lines: streamed from the journal on every iteration (memory flat in N).

    Indexing, ``len`` or assignment load them into a list once (small reports and tests); from then
    on that list is what iterating yields.
    """

    def __init__(self, stream: Callable[[], Iterator[Line]]) -> None:
        self._stream = stream
        self._loaded: list[Line] | None = None

    @classmethod
    def of(cls, lines: list[Line]) -> Lines:
        """Lines already in memory."""
        made = cls(lambda: iter(lines))
        made._loaded = lines
        return made

    def __iter__(self) -> Iterator[Line]:
        return iter(self._loaded) if self._loaded is not None else self._stream()

    def _list(self) -> list[Line]:
        if self._loaded is None:
            self._loaded = list(self._stream())
        return self._loaded

    def __len__(self) -> int:
        return len(self._list())

    def __getitem__(self, index: int) -> Line:
        return self._list()[index]

    def __setitem__(self, index: int, line: Line) -> None:
        self._list()[index] = line

    @property
    def loaded(self) -> bool:
        return self._loaded is not None


@dataclass
class Report:
    kind: str  # "run" or "date"
    business_date: date
    runs: list[dict[str, Any]]
    as_of: datetime
    lines: Lines | list[Line]
    totals: dict[str, Totals]
    checks: list[Check]
    audit: dict[str, Any]
    generated_at: datetime
    candidates: int = 0
    exception_lines: list[Line] = field(default_factory=list)
    break_lines: list[Line] = field(default_factory=list)
    software_version: str = __version__

    def __post_init__(self) -> None:
        if isinstance(self.lines, list):
            self.lines = Lines.of(self.lines)
            self.candidates = self.candidates or len(self.lines)

    @property
    def all_lines(self) -> Lines:
        assert isinstance(self.lines, Lines)
        return self.lines

    @property
    def exceptions(self) -> list[Line]:
        """Held, needs-attention and in-progress lines (kept in memory: they are what people read)."""
        if self.all_lines.loaded:
            return [line for line in self.lines if line.is_exception]
        return self.exception_lines

    @property
    def breaks(self) -> list[Line]:
        if self.all_lines.loaded:
            return [line for line in self.lines if line.reconciliation_break]
        return self.break_lines

    @property
    def exceptions_count(self) -> int:
        return len(self.exceptions)

    @property
    def checks_ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def title(self) -> str:
        if self.kind == "run":
            return f"Payout run {self.runs[0]['id']} - business date {self.business_date}"
        return f"Payout runs of business date {self.business_date}"

    def summary(self) -> dict[str, Any]:
        """Compact figures stored on the run row and pushed as metrics."""
        return {
            "candidates": self.candidates,
            "exceptions": self.exceptions_count,
            "checks_ok": self.checks_ok,
            "totals": {
                ccy: {
                    **{f"{b}_count": t.count[b] for b in BUCKETS},
                    **{b: str(t.amount[b]) for b in BUCKETS},
                    "requested": str(t.requested),
                    "ledger_posted": str(t.ledger_posted),
                    "investsuite_settled": str(t.investsuite_settled),
                    "events_sent": str(t.events_sent),
                }
                for ccy, t in self.totals.items()
            },
        }

    def log_totals(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for t in self.totals.values():
            for b in BUCKETS:
                counts[b] += t.count[b]
        return dict(counts)


def _bucket(decision: str, final_decision: str | None, payout_state: str | None) -> str:
    effective = final_decision or decision
    # a held payout an operator approved is paid like any other from then on
    if effective == "PAY" or (effective == "HOLD" and payout_state not in (None, "HELD")):
        return "paid" if payout_state == "COMPLETED" else "in_progress"
    return {"DEFER": "deferred", "SKIP": "skipped", "HOLD": "held"}[effective]


_LINES_SQL = """
SELECT d.run_id, d.portfolio_id, d.decision, d.reason, d.final_decision, d.final_reason, d.currency,
       d.requested_raw, d.requested_amount, d.ledger_available, d.investsuite_cash, d.pay_amount,
       d.reconciliation_break, d.details, d.dry_run,
       p.id AS payout_id, p.state, p.amount, p.ledger_reference, p.transaction_id, p.failing_step, p.last_error,
       p.updated_at, p.stopped_at, p.hold_reason, p.approved_at, p.approved_by, p.approval_reason,
       p.ledger_posted_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at
  FROM batch.decisions d LEFT JOIN batch.payouts p ON p.id = d.payout_id
 WHERE d.run_id = ANY(:runs)
 ORDER BY d.run_id, d.portfolio_id COLLATE "C"
"""


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
            runs = [
                dict(r._mapping)
                for r in conn.execute(sa.text("SELECT * FROM batch.runs WHERE id = :id"), {"id": run_id})
            ]
            if not runs:
                raise LookupError(f"no run {run_id}")
            kind = "run"
        else:
            assert business_date is not None
            runs = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.text(
                        "SELECT * FROM batch.runs WHERE business_date = :d AND (dry_run = false OR :dry)"
                        " ORDER BY started_at"
                    ),
                    {"d": business_date, "dry": include_dry_runs},
                )
            ]
            if not runs:
                raise LookupError(f"no run for business date {business_date}")
            kind = "date"
        now = datetime.now(UTC)
        finished = [r["finished_at"] for r in runs if r["finished_at"] is not None]
        as_of = now if as_of_now or len(finished) < len(runs) else max(finished)
        run_ids = [r["id"] for r in runs]
        aggregates = conn.execute(
            sa.text(
                "SELECT coalesce(currency, '???') AS ccy, coalesce(sum(requested_amount), 0) AS requested,"
                " count(*) AS n FROM batch.decisions WHERE run_id = ANY(:runs) GROUP BY 1"
            ),
            {"runs": run_ids},
        ).all()

    def stream() -> Iterator[Line]:
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=1000).execute(
                sa.text(_LINES_SQL), {"runs": run_ids}
            )
            for row in rows:
                yield _line(dict(row._mapping), as_of)

    # one streaming pass for the totals; only exceptions and reconciliation breaks are kept
    totals: dict[str, Totals] = {}
    exception_lines: list[Line] = []
    break_lines: list[Line] = []
    candidates = 0
    for line in stream():
        candidates += 1
        _add(totals, line)
        if line.is_exception:
            exception_lines.append(line)
        if line.reconciliation_break:
            break_lines.append(line)
    totals = dict(sorted(totals.items()))
    for agg in aggregates:
        t = totals.setdefault(agg.ccy, Totals())
        t.requested, t.candidates = _q(agg.requested, agg.ccy) or ZERO, int(agg.n)
    audit = audit_summary(engine) if verify_audit else {}
    return Report(
        kind=kind,
        business_date=runs[0]["business_date"],
        runs=[run_header(r) for r in runs],
        as_of=as_of,
        lines=Lines(stream),
        totals=totals,
        checks=_checks(totals),
        audit=audit,
        generated_at=now,
        candidates=candidates,
        exception_lines=exception_lines,
        break_lines=break_lines,
    )


def audit_summary(engine: Engine) -> dict[str, Any]:
    """Verify the audit chain from its last checkpoint (recording a new one) and describe its head."""
    verification = Journal(engine).verify_audit(since_checkpoint=True, record_checkpoint=True)
    return {
        "verified": verification.ok,
        "rows": verification.rows,
        "head_seq": verification.head_seq,
        "head_hash": verification.head_hash,
        "first_broken_seq": verification.first_broken_seq,
        "problem": verification.problem,
        "from_seq": verification.from_seq,
    }


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
    )
    return {k: run[k] for k in keys}


def _line(row: Mapping[str, Any], as_of: datetime) -> Line:
    state = state_as_of(row, as_of) if row["payout_id"] is not None else None
    ccy = row["currency"]
    steps = (
        {
            s.removesuffix("_at"): (row[s].isoformat() if row[s] is not None and row[s] <= as_of else None)
            for s in STAMPS
        }
        if row["payout_id"] is not None
        else {}
    )
    details = row["details"] or {}
    decision = row["final_decision"] or row["decision"]
    reason = row["final_reason"] or row["reason"]
    return Line(
        run_id=str(row["run_id"]),
        portfolio_id=row["portfolio_id"],
        decision=decision,
        reason=reason,
        outcome=_bucket(row["decision"], row["final_decision"], state),
        currency=ccy,
        requested_raw=row["requested_raw"],
        requested=_q(row["requested_amount"], ccy),
        ledger_available=_q(row["ledger_available"], ccy),
        investsuite_cash=_q(row["investsuite_cash"], ccy),
        paid=_q(row["amount"], ccy) if state == "COMPLETED" else None,
        reconciliation_break=row["reconciliation_break"],
        payout_id=str(row["payout_id"]) if row["payout_id"] else None,
        payout_state=state,
        ledger_reference=row["ledger_reference"] if steps.get("ledger_posted") else None,
        transaction_id=row["transaction_id"] if steps.get("transaction_recorded") else None,
        failing_step=row["failing_step"] if state == "NEEDS_ATTENTION" else None,
        last_error=row["last_error"] if state in ("NEEDS_ATTENTION", "CANCELLED") else None,
        note=_note(details, row, as_of),
        steps=steps,
        dry_run=bool(row["dry_run"]),
    )


def _note(details: Mapping[str, Any], row: Mapping[str, Any], as_of: datetime) -> str | None:
    """The decision's note, plus the operator's approval once it happened (by the report's cut-off)."""
    parts = [str(details[key]) for key in ("note", "execution_note") if details.get(key)]
    if row["approved_by"] and row["approved_at"] is not None and row["approved_at"] <= as_of:
        reason = f": {row['approval_reason']}" if row["approval_reason"] else ""
        parts.append(f"approved by {row['approved_by']} at {row['approved_at'].isoformat()}{reason}")
    return "; ".join(parts) or None


def _add(totals: dict[str, Totals], line: Line) -> None:
    """Count one line into the totals of its currency."""
    t = totals.setdefault(line.currency or "???", Totals())
    t.count[line.outcome] += 1
    t.amount[line.outcome] += line.requested or ZERO
    if line.reconciliation_break:
        t.reconciliation_breaks += 1
    if line.payout_id and line.outcome in ("paid", "in_progress"):
        amount = line.requested or ZERO
        if line.steps.get("ledger_posted"):
            t.ledger_posted += amount
        if line.steps.get("transaction_recorded"):
            t.investsuite_settled += amount
        if line.steps.get("event_sent"):
            t.events_sent += amount


def _checks(totals: Mapping[str, Totals]) -> list[Check]:
    checks: list[Check] = []
    for ccy, t in totals.items():
        parts = " + ".join(f"{b} {t.amount[b]}" for b in BUCKETS)
        buckets = sum((t.amount[b] for b in BUCKETS), ZERO)
        counted = sum(t.count[b] for b in BUCKETS)
        checks.append(
            Check(
                "requested = paid + in_progress + deferred + skipped + held",
                ccy,
                t.requested == buckets and t.candidates == counted,
                f"{t.requested} = {parts} ({t.candidates} candidates, {counted} classified)",
            )
        )
        paid = t.amount["paid"]
        ok = paid == t.ledger_posted == t.investsuite_settled == t.events_sent
        checks.append(
            Check(
                "paid = ledger posted = InvestSuite SETTLED = events",
                ccy,
                ok,
                f"paid {paid}, ledger {t.ledger_posted}, settled {t.investsuite_settled}, events {t.events_sent}",
            )
        )
    return checks


def write_reports(report: Report, folder: Path) -> dict[str, Path]:
    """Write the report in every format under ``folder``; return the paths by format."""
    from batch.service import render  # noqa: PLC0415 - render imports this module

    folder.mkdir(parents=True, exist_ok=True)
    stem = (
        f"run-{report.business_date}-{report.runs[0]['id']}" if report.kind == "run" else f"date-{report.business_date}"
    )
    paths: dict[str, Path] = {}
    for fmt, writer in render.WRITERS.items():
        path = folder / f"{stem}.{render.EXTENSIONS[fmt]}"
        with path.open("w", encoding="utf-8", newline="") as out:
            writer(report, out)
        paths[fmt] = path
    return paths
