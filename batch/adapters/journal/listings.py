"""Operators' listings: payouts by state, HOLD decisions that created no payout, run history.

Each listing is paged (limit, offset) and returns the total beside the page, so the command can say
when its output was cut. The run window's lower bound (the first business date) is read here too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from batch.adapters.journal.base import JournalBase
from batch.adapters.sqlfiles import load_queries
from batch.domain.payout import FlowKind, PayoutState
from batch.domain.records import PayoutRecord

Q = load_queries("journal_listings")
T = TypeVar("T")
#: one selection (``held_without_payout``), paged and counted, so the total always matches the pages
_HELD = f"({Q.held_without_payout.sql}\n) held"
_HELD_PAGE = sa.text(f"SELECT * FROM {_HELD} ORDER BY portfolio_id LIMIT :n OFFSET :offset")
_HELD_COUNT = sa.text(f"SELECT count(*) FROM {_HELD}")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: its items, where it starts, and how many there are in all."""

    items: list[T]
    offset: int
    total: int

    @property
    def cut(self) -> bool:
        """Whether items exist beyond this page."""
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True)
class HeldDecision:
    """A portfolio's latest decision: a HOLD that created no payout (the data must be fixed first)."""

    portfolio_id: str
    reason: str
    currency: str | None
    requested_amount: Decimal | None
    requested_raw: str | None
    run_id: uuid.UUID
    business_date: date
    decided_at: datetime


class ListingStore(JournalBase):
    def payouts_page(
        self,
        states: Sequence[PayoutState],
        *,
        limit: int,
        offset: int = 0,
        flows: Sequence[FlowKind] = tuple(FlowKind),
    ) -> Page[PayoutRecord]:
        """Operations in ``states`` of ``flows`` (default: every flow), oldest first."""
        params: dict[str, Any] = {"states": [s.value for s in states], "flows": [f.value for f in flows]}
        with self._read() as conn:
            rows = conn.execute(Q.payouts_page.text, params | {"n": limit, "offset": offset}).all()
            total = conn.execute(Q.payouts_count.text, params).scalar_one()
        return Page([PayoutRecord.from_mapping(r._mapping) for r in rows], offset, int(total))

    def held_without_payout_page(self, *, limit: int, offset: int = 0) -> Page[HeldDecision]:
        """Each portfolio's latest withdrawal decision since the last full run, when it is a HOLD without a payout."""
        with self._read() as conn:
            rows = conn.execute(_HELD_PAGE, {"n": limit, "offset": offset}).all()
            total = conn.execute(_HELD_COUNT).scalar_one()
        items = [
            HeldDecision(
                portfolio_id=r.portfolio_id,
                reason=r.reason,
                currency=r.currency.strip() if r.currency else None,
                requested_amount=r.requested_amount,
                requested_raw=r.requested_raw,
                run_id=r.run_id,
                business_date=r.business_date,
                decided_at=r.created_at,
            )
            for r in rows
        ]
        return Page(items, offset, int(total))

    def runs_page(self, *, business_date: date | None, limit: int, offset: int = 0) -> Page[Mapping[str, Any]]:
        """Runs, newest first (of one business date when given)."""
        with self._read() as conn:
            rows = conn.execute(Q.runs_page.text, {"d": business_date, "n": limit, "offset": offset}).all()
            total = conn.execute(Q.runs_count.text, {"d": business_date}).scalar_one()
        return Page([dict(r._mapping) for r in rows], offset, int(total))

    def first_business_date(self) -> date | None:
        """The earliest business date a non-dry run was started for (None: the journal has no run yet)."""
        with self._read() as conn:
            value = conn.execute(Q.first_business_date.text).scalar_one()
        return value if isinstance(value, date) else None
