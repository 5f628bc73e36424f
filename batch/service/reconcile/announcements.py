"""Reconcile the withdrawals announced for the bank (broker integration by InvestSuite) for one value date.

Every payout the bank's core banking made to a customer's counter account on the date must be accounted for
by the journal: announced (the operation COMPLETED, with InvestSuite's event answer kept), in progress, or
held with a reason (decided again every night). Per currency, read from the ledger and the journal:

    ledger payouts to counter accounts of the date = announced + in progress + held + not decided

A payout no run decided is a break (``BANK_PAYOUT_NOT_DECIDED``), so is an announcement whose amount or
currency differs from the ledger's (``AMOUNT_MISMATCH``), one COMPLETED without InvestSuite's answer kept
(``EVENT_NOT_CONFIRMED``), and one of the date whose ledger payout does not exist
(``ANNOUNCED_PAYOUT_NOT_IN_LEDGER``). Read-only; the pure matching is ``match_announcement``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from batch.adapters.ledger_bank_payouts import LedgerBankPayout
from batch.service.reconcile.rules import Break, BreakType, text

ZERO = Decimal(0)
BUCKETS = ("announced", "in_progress", "held", "not_decided")
_CHUNK = 1000


@dataclass
class AnnouncementFigures:
    """One currency: the ledger's figure and where the journal puts each payout."""

    ledger_count: int = 0
    ledger: Decimal = ZERO
    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0))
    amount: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(BUCKETS, ZERO))

    @property
    def agree(self) -> bool:
        return self.ledger == sum(self.amount.values(), ZERO) and self.ledger_count == sum(self.count.values())

    def to_dict(self, currency: str) -> dict[str, Any]:
        return {
            "ledger_count": self.ledger_count,
            "ledger": text(self.ledger, currency),
            **{f"{b}_count": self.count[b] for b in BUCKETS},
            **{b: text(self.amount[b], currency) for b in BUCKETS},
        }


def match_announcement(payout: LedgerBankPayout, status: Mapping[str, Any]) -> tuple[str, list[Break]]:
    """Where the journal puts one of the bank's payouts (a bucket), and the breaks it shows. Pure."""
    ccy, ref = payout.currency, payout.reference
    if status.get("operation_id") is None:
        if status.get("decision") is None:
            missing = Break(BreakType.BANK_PAYOUT_NOT_DECIDED, None, ccy, None, payout.amount, "journal", reference=ref)
            return "not_decided", [missing]
        return ("held" if status["decision"] == "HOLD" else "in_progress"), []
    breaks: list[Break] = []
    operation = str(status["operation_id"])
    journal_ccy = str(status["currency"]).strip()
    if (Decimal(status["amount"]), journal_ccy) != (payout.amount, payout.currency):
        evidence: dict[str, Any] = {"journal_currency": journal_ccy}
        expected = Decimal(status["amount"])
        breaks.append(
            Break(BreakType.AMOUNT_MISMATCH, None, ccy, expected, payout.amount, "ledger", operation, ref, evidence)
        )
    if status["state"] != "COMPLETED":
        return "in_progress", breaks
    if not status.get("event_status") or int(status["event_status"]) >= 300:
        answered: dict[str, Any] = {"event_status": status.get("event_status")}
        breaks.append(
            Break(
                BreakType.EVENT_NOT_CONFIRMED, None, ccy, payout.amount, None, "investsuite", operation, ref, answered
            )
        )
    return "announced", breaks


class _Journal(Protocol):
    def announcement_status(self, references: list[str]) -> list[dict[str, Any]]: ...

    def announcements_of_date(self, business_date: date) -> list[dict[str, Any]]: ...


class _Ledger(Protocol):
    def bank_payouts(self, value_date: date, after_id: int, limit: int) -> list[LedgerBankPayout]: ...

    def bank_payouts_by_reference(self, references: list[str]) -> dict[str, LedgerBankPayout]: ...


@dataclass
class AnnouncementReconciliation:
    checked: int = 0
    figures: dict[str, AnnouncementFigures] = field(default_factory=dict)
    breaks: list[Break] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {ccy: f.to_dict(ccy) for ccy, f in sorted(self.figures.items())}


def reconcile_announcements(journal: _Journal, ledger: _Ledger, value_date: date) -> AnnouncementReconciliation:
    """Every bank payout of ``value_date`` against the journal, 1,000 at a time (read-only)."""
    result = AnnouncementReconciliation()
    after = 0
    while True:
        page = ledger.bank_payouts(value_date, after, _CHUNK)
        if not page:
            break
        after = max(p.id for p in page)
        statuses = {row["credit_reference"]: row for row in journal.announcement_status([p.reference for p in page])}
        for payout in page:
            result.checked += 1
            figures = result.figures.setdefault(payout.currency, AnnouncementFigures())
            figures.ledger_count += 1
            figures.ledger += payout.amount
            bucket, breaks = match_announcement(payout, statuses.get(payout.reference, {}))
            figures.count[bucket] += 1
            figures.amount[bucket] += payout.amount
            result.breaks += breaks
    operations = journal.announcements_of_date(value_date)
    for start in range(0, len(operations), _CHUNK):
        chunk = operations[start : start + _CHUNK]
        found = ledger.bank_payouts_by_reference([op["credit_reference"] for op in chunk])
        for op in chunk:
            if op["credit_reference"] not in found:
                result.breaks.append(
                    Break(
                        BreakType.ANNOUNCED_PAYOUT_NOT_IN_LEDGER,
                        portfolio_id=op["portfolio_id"],
                        currency=str(op["currency"]).strip(),
                        expected=Decimal(op["amount"]),
                        source="ledger",
                        payout_id=str(op["id"]),
                        reference=op["credit_reference"],
                    )
                )
    return result
