"""What a run report is made of: lines, groups, buckets, totals and checks. Pure: no I/O, no clock.

A line is one candidate portfolio (its decision), or one payout a run moved that another run decided.
Every line is in one **group** and one **bucket**:

    groups   planned        decided by the run(s) of the report ("planned tonight")
             paid_earlier   (a date's report) a payout of the value date whose money moved under an
                            earlier decision of its portfolio: the customer asked again, both are paid
             carried_over   decided by an earlier run, driven on by this one (a crash, a stop, a lost answer)
             approved       a HELD payout an operator released, paid by this run
             retried        a NEEDS_ATTENTION payout an operator sent back, driven by this run (whatever the outcome)
    buckets  paid / in_progress / would_pay (dry run) / deferred / skipped / held

Control equation per currency and group: requested = the sum over the buckets. A HOLD unchanged since
the previous run is **still held**: a held line, listed apart, that does not raise the alarm by itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from batch import __version__
from batch.domain.payout import FLOW_STATES, STAMP_COLUMN, FlowKind, PayoutState
from batch.service.reports.deposits import DepositSection
from batch.service.reports.figures import Check, quantized

SCHEMA_VERSION = "3.0"
ZERO = Decimal(0)
BUCKETS = ("paid", "in_progress", "would_pay", "deferred", "skipped", "held")
GROUPS = ("planned", "paid_earlier", "carried_over", "approved", "retried")
GROUP_TITLES = {
    "planned": "planned tonight",
    "paid_earlier": "paid earlier on the date (the portfolio was decided again)",
    "carried_over": "carried over from an earlier run",
    "approved": "approved (held, released by an operator)",
    "retried": "retried by an operator",
}
#: payout timestamp columns in flow order, and the state each one stamps (from the domain's one vocabulary)
#: the withdrawal's step timestamps, in flow order (ledger_posted_at ... completed_at)
STAMPS = tuple(STAMP_COLUMN[state] for state in FLOW_STATES[FlowKind.WITHDRAWAL][1:])
STATE_OF_STAMP = {column: state.value for state, column in STAMP_COLUMN.items()}
EXCEPTION_STATES = {PayoutState.NEEDS_ATTENTION.value, PayoutState.HELD.value}


def state_as_of(payout: Mapping[str, Any], as_of: datetime) -> str:
    """The payout's state at ``as_of`` from its timestamps (its current state if nothing is later)."""
    if payout["updated_at"] <= as_of:
        return str(payout["state"])
    forward = [(payout[s], STATE_OF_STAMP[s]) for s in STAMPS if payout[s] is not None and payout[s] <= as_of]
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
    """One candidate portfolio of a run (or of a date), or one payout a run moved that another decided."""

    run_id: str
    portfolio_id: str
    decision: str
    reason: str
    outcome: str  # the bucket
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
    group: str = "planned"
    still_held: bool = False
    moved: bool = False  # the report's run(s) posted this payout on the ledger
    earlier: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_exception(self) -> bool:
        if self.dry_run and self.decision == "PAY":
            return False  # a dry run pays nothing: its PAY lines are what would be paid, not work in flight
        # a HOLD with a payout follows that payout once approved; a HOLD without one waits for a fix of the data
        held_without_payout = self.decision == "HOLD" and self.payout_id is None
        return self.payout_state in EXCEPTION_STATES or held_without_payout or self.outcome == "in_progress"

    @property
    def in_flight(self) -> bool:
        """Money moved on the ledger, the payout not completed nor stopped: a run resumes it."""
        return (
            self.outcome == "in_progress"
            and bool(self.steps.get("ledger_posted"))
            and self.payout_state not in EXCEPTION_STATES
        )

    @property
    def exception_kind(self) -> str:
        """still_held, held, needs_attention or in_progress."""
        if self.payout_state == "NEEDS_ATTENTION":
            return "needs_attention"
        if self.payout_state == "HELD" or (self.decision == "HOLD" and self.payout_id is None):
            return "still_held" if self.still_held else "held"
        return "in_progress"


def bucket(decision: str, final_decision: str | None, payout_state: str | None, dry_run: bool) -> str:
    effective = final_decision or decision
    if dry_run and effective == "PAY":
        return "would_pay"
    # a held payout an operator approved is paid like any other from then on
    if effective == "PAY" or (effective == "HOLD" and payout_state not in (None, "HELD")):
        if payout_state == "CANCELLED":
            return "deferred"
        return "paid" if payout_state == "COMPLETED" else "in_progress"
    return {"DEFER": "deferred", "SKIP": "skipped", "HOLD": "held"}[effective]


@dataclass
class GroupTotals:
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    amount: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    still_held_count: int = 0
    still_held_amount: Decimal = ZERO
    moved_count: int = 0
    moved_amount: Decimal = ZERO

    @property
    def lines(self) -> int:
        return sum(self.count[b] for b in BUCKETS)

    @property
    def requested(self) -> Decimal:
        return sum((self.amount[b] for b in BUCKETS), ZERO)


@dataclass
class Totals:
    """One currency: buckets over every group, each group, and the journal's own figures."""

    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    amount: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    groups: dict[str, GroupTotals] = field(default_factory=dict)
    ledger_posted: Decimal = ZERO
    investsuite_settled: Decimal = ZERO
    events_sent: Decimal = ZERO
    reconciliation_breaks: int = 0
    #: the journal's own aggregate of the lines' requests (independent of the bucketing): candidates + movements
    requested: Decimal = ZERO
    candidates: int = 0
    #: payouts on their way (past the ledger, not completed, not stopped): their own check line, not a FAIL
    in_flight_count: int = 0
    in_flight_posted: Decimal = ZERO
    in_flight_settled: Decimal = ZERO
    in_flight_events: Decimal = ZERO

    def add(self, line: Line) -> None:
        amount = line.requested or ZERO
        group = self.groups.setdefault(line.group, GroupTotals())
        for target in (self, group):
            target.count[line.outcome] += 1
            target.amount[line.outcome] += amount
        if line.still_held:
            group.still_held_count += 1
            group.still_held_amount += amount
        if line.moved:
            group.moved_count += 1
            group.moved_amount += amount
        if line.reconciliation_break:
            self.reconciliation_breaks += 1
        if line.payout_id and line.outcome in ("paid", "in_progress"):
            if line.steps.get("ledger_posted"):
                self.ledger_posted += amount
            if line.steps.get("transaction_recorded"):
                self.investsuite_settled += amount
            if line.steps.get("event_sent"):
                self.events_sent += amount
            if line.in_flight:
                self.in_flight_count += 1
                self.in_flight_posted += amount
                self.in_flight_settled += amount if line.steps.get("transaction_recorded") else ZERO
                self.in_flight_events += amount if line.steps.get("event_sent") else ZERO

    def paid_of(self, *groups: str) -> Decimal:
        """Paid in these groups only (a date's own money: ``planned`` and ``paid_earlier``)."""
        return sum((g.amount["paid"] for name, g in self.groups.items() if name in groups), ZERO)

    @property
    def moved(self) -> Decimal:
        return sum((g.moved_amount for g in self.groups.values()), ZERO)

    def at_minor_unit(self, currency: str) -> None:
        """Every amount at the currency's minor unit, empty buckets included ("0.00", not "0")."""
        amounts: list[dict[str, Decimal]] = [self.amount, *(g.amount for g in self.groups.values())]
        for amount in amounts:
            for b in BUCKETS:
                amount[b] = quantized(amount[b], currency) or ZERO
        for group in self.groups.values():
            group.still_held_amount = quantized(group.still_held_amount, currency) or ZERO
            group.moved_amount = quantized(group.moved_amount, currency) or ZERO
        for name in (
            "ledger_posted",
            "investsuite_settled",
            "events_sent",
            "requested",
            "in_flight_posted",
            "in_flight_settled",
            "in_flight_events",
        ):
            setattr(self, name, quantized(getattr(self, name), currency) or ZERO)


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
    #: the reconciliation of the run (or the date's latest), as recorded; None when none was made
    reconcile: dict[str, Any] | None = None
    #: the incoming credits the runs decided or drove (None when there were none)
    deposits: DepositSection | None = None
    #: the bank's payouts the runs decided or announced (withdrawals, broker integration by InvestSuite)
    announcements: DepositSection | None = None

    def __post_init__(self) -> None:
        if isinstance(self.lines, list):
            self.lines = Lines.of(self.lines)
            self.candidates = self.candidates or len(self.lines)

    @property
    def all_lines(self) -> Lines:
        assert isinstance(self.lines, Lines)
        return self.lines

    @property
    def dry_run(self) -> bool:
        return bool(self.runs) and all(r["dry_run"] for r in self.runs)

    @property
    def exceptions(self) -> list[Line]:
        """Held, still held, needs-attention and in-progress lines (kept in memory: they are what people read)."""
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
    def still_held_count(self) -> int:
        return sum(1 for line in self.exceptions if line.exception_kind == "still_held")

    @property
    def reconcile_breaks(self) -> int:
        return int(self.reconcile["breaks"]) if self.reconcile else 0

    @property
    def checks_ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def title(self) -> str:
        prefix = "DRY RUN - " if self.dry_run else ""
        if self.kind == "run":
            return f"{prefix}Payout run {self.runs[0]['id']} - business date {self.business_date}"
        return f"{prefix}Payout runs of business date {self.business_date}"

    def summary(self) -> dict[str, Any]:
        """Compact figures stored on the run row, shown by ``batch runs`` and pushed as metrics."""
        return {
            "candidates": self.candidates,
            "exceptions": self.exceptions_count,
            "still_held": self.still_held_count,
            "checks_ok": self.checks_ok,
            "totals": {
                ccy: {
                    **{f"{b}_count": t.count[b] for b in BUCKETS},
                    **{b: str(t.amount[b]) for b in BUCKETS},
                    "requested": str(t.requested),
                    "ledger_posted": str(t.ledger_posted),
                    "investsuite_settled": str(t.investsuite_settled),
                    "events_sent": str(t.events_sent),
                    "moved": str(t.moved),
                    "groups": {
                        g: {"count": gt.lines, "paid": str(gt.amount["paid"]), "paid_count": gt.count["paid"]}
                        for g, gt in t.groups.items()
                    },
                }
                for ccy, t in self.totals.items()
            },
            "reconcile": (
                {k: self.reconcile[k] for k in ("id", "checked", "breaks")} | {"error": self.reconcile.get("error")}
                if self.reconcile
                else None
            ),
            "deposits": self.deposits.summary() if self.deposits else None,
            "announcements": self.announcements.summary() if self.announcements else None,
        }

    def log_totals(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for t in self.totals.values():
            for b in BUCKETS:
                counts[b] += t.count[b]
        return dict(counts)
