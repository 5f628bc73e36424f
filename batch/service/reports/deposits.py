"""The deposits section of a run report: every incoming credit a run decided or drove, with its control equation.

Per currency: credits = announced + in progress + held + deferred, where *announced* are the credits whose
deposit operation COMPLETED (moved in the ledger, client set-up, and announced to InvestSuite), *held*
the money that cannot be announced yet (decided again by every run), *deferred* a credit another
operation is already placing. New holds and operations needing attention are exceptions; a hold
unchanged since the previous run is "still held".

The same section, built over the flow ``WITHDRAWAL_ANNOUNCE`` (``SECTIONS["announcements"]``), is the report's
account of the bank's payouts to counter accounts that the job announces when the withdrawals' broker
integration is by InvestSuite: payouts = announced + in progress + held + deferred.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from batch.adapters.sqlfiles import load_queries
from batch.service.reports.figures import Check, quantized

Q = load_queries("report")
ZERO = Decimal(0)
DEPOSIT_BUCKETS = ("announced", "in_progress", "held", "deferred")


@dataclass(frozen=True)
class SectionKind:
    """Which ledger transfers a section covers: the decisions' flow, the operations' flows, and its words."""

    decision_flows: tuple[str, ...]
    operation_flows: tuple[str, ...]
    name: str  # as the checks name it
    unit: str  # what one line is


SECTIONS = {
    "deposits": SectionKind(("DEPOSIT",), ("DEPOSIT", "DEPOSIT_ANNOUNCE"), "deposits", "credits"),
    "announcements": SectionKind(
        ("WITHDRAWAL_ANNOUNCE",), ("WITHDRAWAL_ANNOUNCE",), "withdrawal announcements", "bank payouts"
    ),
}


@dataclass(frozen=True)
class DepositLine:
    credit_reference: str
    portfolio_id: str | None
    decision: str
    reason: str
    currency: str | None
    amount: Decimal | None
    flow: str | None
    state: str | None
    ledger_reference: str | None
    failing_step: str | None
    last_error: str | None
    still_held: bool
    carried_over: bool
    note: str | None

    @property
    def bucket(self) -> str:
        if self.state == "COMPLETED":
            return "announced"
        if self.state in ("ANNOUNCE_REFUSED", "MOVE_REVERSED"):  # refused after the move: held, never announced
            return "held"
        if self.decision == "PAY" and self.state not in (None, "CANCELLED", "NEEDS_ATTENTION"):
            return "in_progress"
        if self.decision == "DEFER":
            return "deferred"
        return "held"

    @property
    def exception_kind(self) -> str | None:
        if self.state == "NEEDS_ATTENTION" or self.reason == "PAYOUT_NEEDS_ATTENTION":  # listed by a later run too
            return "needs_attention"
        if self.bucket == "held":
            return "still_held" if self.still_held else "held"
        return None


@dataclass
class DepositTotals:
    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEPOSIT_BUCKETS, 0))
    amount: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(DEPOSIT_BUCKETS, ZERO))
    credits: int = 0
    received: Decimal = ZERO


@dataclass
class DepositSection:
    """Totals and exceptions kept; every line streamed again from the journal when a writer asks (flat memory)."""

    stream: Callable[[], Iterator[DepositLine]]
    totals: dict[str, DepositTotals]
    exceptions: list[DepositLine]
    kind: SectionKind = SECTIONS["deposits"]

    @property
    def count(self) -> int:
        """Credits in the section (every line is counted in its currency's totals)."""
        return sum(t.credits for t in self.totals.values())

    @property
    def lines(self) -> Iterator[DepositLine]:
        return self.stream()

    @property
    def new_exceptions(self) -> int:
        """Exceptions that are not holds unchanged since the previous run."""
        return sum(1 for line in self.exceptions if line.exception_kind != "still_held")

    def checks(self) -> list[Check]:
        found = []
        for ccy, t in self.totals.items():
            parts = " + ".join(f"{b} {t.amount[b]}" for b in DEPOSIT_BUCKETS if t.count[b])
            ok = t.received == sum(t.amount.values(), ZERO) and t.credits == sum(t.count.values())
            name = f"{self.kind.name}: {self.kind.unit} = announced + in_progress + held + deferred"
            found.append(Check(name, ccy, ok, f"{t.received} = {parts or '0'} ({t.credits} {self.kind.unit})"))
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "credits": self.count,
            "exceptions": len(self.exceptions),
            "new_exceptions": self.new_exceptions,
            "totals": {
                ccy: {
                    **{f"{b}_count": t.count[b] for b in DEPOSIT_BUCKETS},
                    **{b: str(t.amount[b]) for b in DEPOSIT_BUCKETS},
                }
                for ccy, t in self.totals.items()
            },
        }


def _line(row: Any) -> DepositLine:
    details = row.details or {}
    return DepositLine(
        credit_reference=row.credit_reference,
        portfolio_id=row.portfolio_id,
        decision=row.decision,
        reason=row.reason,
        currency=row.currency,
        amount=quantized(row.amount, row.currency),
        flow=row.flow,
        state=row.state,
        ledger_reference=row.ledger_reference,
        failing_step=row.failing_step,
        last_error=row.last_error,
        still_held=bool(row.still_held),
        carried_over=bool(row.carried_over),
        note=details.get("execution_note") or details.get("note"),
    )


def totals_of(lines: Iterable[DepositLine]) -> dict[str, DepositTotals]:
    totals: dict[str, DepositTotals] = defaultdict(DepositTotals)
    for line in lines:
        t = totals[line.currency or "???"]
        amount = line.amount or ZERO
        t.credits += 1
        t.received += amount
        t.count[line.bucket] += 1
        t.amount[line.bucket] += amount
    return dict(sorted(totals.items()))


def build_deposit_section(engine: Engine, run_ids: Sequence[Any], kind: str = "deposits") -> DepositSection | None:
    """The deposits (or ``kind``) of these runs (None when they decided and drove none): one streaming pass."""
    runs = list(run_ids)
    section = SECTIONS[kind]
    params = {
        "runs": runs,
        "decision_flows": list(section.decision_flows),
        "operation_flows": list(section.operation_flows),
    }

    def stream() -> Iterator[DepositLine]:
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=1000).execute(Q.deposit_lines.text, params)
            for row in rows:
                yield _line(row)

    exceptions: list[DepositLine] = []

    def keeping_exceptions() -> Iterator[DepositLine]:
        for line in stream():
            if line.exception_kind is not None:
                exceptions.append(line)
            yield line

    totals = totals_of(keeping_exceptions())
    if not totals:
        return None
    return DepositSection(stream, totals, exceptions, section)
