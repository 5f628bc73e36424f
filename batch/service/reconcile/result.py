"""One reconciliation's result as recorded: what was checked, its breaks and its figures per currency.

Shared by the read-back that makes it (``readback``), the per-flow parts that add to it (``deposits``) and
the text that shows it (``text``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from batch.service.reconcile.book import BookFigures
from batch.service.reconcile.figures import PaidFigures
from batch.service.reconcile.rules import Break, count_by_type


@dataclass
class Reconciliation:
    """The result of one reconciliation, as recorded."""

    kind: str  # "payouts" or "book"
    id: uuid.UUID
    business_date: date | None
    run_id: uuid.UUID | None
    started_at: datetime
    checked: int = 0
    breaks: list[Break] = field(default_factory=list)
    paid: dict[str, PaidFigures] = field(default_factory=dict)
    book: dict[str, BookFigures] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    finished_at: datetime | None = None
    #: withdrawals announced for the bank (broker integration by InvestSuite), per currency (empty otherwise)
    announcements: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.breaks

    def figures(self) -> dict[str, Any]:
        """What is stored (``reconciliations.figures``): per currency and source, and how it was read."""
        per_currency = (
            {ccy: f.to_dict(ccy) for ccy, f in sorted(self.paid.items())}
            if self.kind == "payouts"
            else {ccy: f.to_dict(ccy) for ccy, f in sorted(self.book.items())}
        )
        found = {"currencies": per_currency, "break_types": count_by_type(self.breaks), "stats": self.stats}
        return found | ({"announcements": self.announcements} if self.announcements else {})

    def summary(self) -> dict[str, Any]:
        """Compact: stored in a run's summary and shown by ``batch runs``."""
        return {
            "id": str(self.id),
            "checked": self.checked,
            "breaks": len(self.breaks),
            "break_types": count_by_type(self.breaks),
        }
