"""Reconciliation figures: one currency's "paid, everywhere once" sums, each from its own source.

Pure, like ``batch.service.reconcile.rules`` (whose per-payout records and rules they count).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from batch.service.reconcile.rules import (
    ZERO,
    Break,
    BreakType,
    LedgerFact,
    PayoutFacts,
    RemoteFacts,
    settled,
    text,
    withdrawn,
)


@dataclass
class PaidFigures:
    """One currency's "paid, everywhere once" figures, each from its own source.

    ``journal``: the payouts the journal says COMPLETED; ``ledger``: the transfers read back from the
    ledger under the keys of the payouts checked; ``investsuite``: their transactions read back (exactly
    one, its CASH_WITHDRAWAL movement SETTLED or EXECUTED); ``events``: those whose event id InvestSuite
    answered is kept. A payout still on its way (past the ledger, not completed, not stopped) is counted
    apart, under ``in_flight_*``, by each source: it is its own line, not a difference. A payout stopped
    after the ledger (NEEDS_ATTENTION) stays in the sources' figures: a difference until it is resolved.
    ``moved_journal`` / ``moved_ledger``: the payouts a run posted on the ledger itself, by the journal and
    as read back.
    """

    payouts: int = 0
    journal: Decimal = ZERO
    ledger: Decimal = ZERO
    investsuite: Decimal = ZERO
    events: Decimal = ZERO
    moved_count: int = 0
    moved_journal: Decimal = ZERO
    moved_ledger: Decimal = ZERO
    unknown_ledger: Decimal = ZERO
    in_flight_count: int = 0
    in_flight_journal: Decimal = ZERO
    in_flight_ledger: Decimal = ZERO
    in_flight_investsuite: Decimal = ZERO
    in_flight_events: Decimal = ZERO

    @property
    def agree(self) -> bool:
        paid = self.journal == self.ledger == self.investsuite == self.events
        return paid and self.moved_journal == self.moved_ledger

    def to_dict(self, currency: str) -> dict[str, Any]:
        return {
            "payouts": self.payouts,
            **{
                name: text(getattr(self, name), currency)
                for name in (
                    "journal",
                    "ledger",
                    "investsuite",
                    "events",
                    "moved_journal",
                    "moved_ledger",
                    "in_flight_journal",
                    "in_flight_ledger",
                    "in_flight_investsuite",
                    "in_flight_events",
                )
            },
            "moved_count": self.moved_count,
            "in_flight_count": self.in_flight_count,
            "unknown_ledger": text(self.unknown_ledger, currency),
            "agree": self.agree,
        }


def in_flight(payout: PayoutFacts) -> bool:
    """Past the ledger, not completed and not stopped: on its way (a run resumes it)."""
    return payout.posted and payout.state not in ("COMPLETED", "NEEDS_ATTENTION", "CANCELLED")


def add_paid(
    figures: dict[str, PaidFigures], payout: PayoutFacts, transfer: LedgerFact | None, remote: RemoteFacts
) -> None:
    """Count one payout into its currency's figures, each source by what it holds."""
    f = figures.setdefault(payout.currency, PaidFigures())
    if payout.moved_in_run:
        f.moved_count += 1
        f.moved_journal += payout.amount
        if transfer is not None and transfer.currency == payout.currency:
            f.moved_ledger += transfer.amount
    ledger = transfer.amount if transfer is not None and transfer.currency == payout.currency else ZERO
    investsuite = ZERO
    if remote.transactions is not None and len(remote.transactions) == 1:
        tx = remote.transactions[0]
        booked = withdrawn(tx, payout.currency)
        if booked is not None and settled(tx):
            investsuite = booked
    events = payout.amount if payout.event_id else ZERO
    if in_flight(payout):
        f.in_flight_count += 1
        f.in_flight_journal += payout.amount
        f.in_flight_ledger += ledger
        f.in_flight_investsuite += investsuite
        f.in_flight_events += events
        return
    if payout.completed:
        f.payouts += 1
        f.journal += payout.amount
    # the systems of record count whatever they hold, completed or not: a payout stopped after the
    # ledger makes them differ from the journal's paid figure until it is resolved
    f.ledger += ledger
    f.investsuite += investsuite
    f.events += events


def add_unknown(figures: dict[str, PaidFigures], breaks: Iterable[Break]) -> None:
    for b in breaks:
        if b.type is BreakType.UNKNOWN_LEDGER_PAYOUT and b.currency and b.found is not None:
            figures.setdefault(b.currency, PaidFigures()).unknown_ledger += b.found
