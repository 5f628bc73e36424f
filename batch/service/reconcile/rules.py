"""Reconciliation rules: the journal against the systems of record, as pure functions of plain records.

Three-way, per payout (``match_payout``): what the journal says happened against what the core
banking ledger and InvestSuite hold now, read back. The full book's rules are in ``reconcile_book``.
No I/O here: ``batch.service.reconcile.readback`` reads the three systems and calls these functions, so
each rule is unit-tested with hand-made records (and the deposits flow can reuse them).

Which checks apply follows the steps the payout reached (the journal's per-step timestamps):

    reached            expected in the systems of record
    ledger_posted      one ledger transfer under the payout's key: same amount, currency, reference
    (any state)        no ledger transfer under the key of a payout that never posted (CANCELLED, ...)
    transaction_recorded  exactly one InvestSuite transaction with external_id = the ledger reference:
                       the journal's id, one CASH_WITHDRAWAL movement of -amount $CCY, SETTLED or EXECUTED
                       (the transaction-level ``status`` is response-only and computed: informative only,
                       the docs' example is "COMPLETED")
    divest_cleared     the divest amount no longer holds the paid amount (current - target < paid), unless a
                       later payout of the portfolio took the divest amount over (the customer asked again)
    holdings_updated   the $CCY cash not above the recorded absolute target plus the deposits the job
                       announced for the portfolio after the payout (what moved its cash since)
    event_sent         the event id InvestSuite answered is kept

and, per value date, every customer -> payout clearing transfer has a payout of the journal behind it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from batch.domain.money import FULL_WITHDRAWAL_THRESHOLD, exact

ZERO = Decimal(0)


class BreakType(StrEnum):
    """Break codes, stable: they appear in reports, the journal and alerts."""

    UNKNOWN_LEDGER_PAYOUT = "UNKNOWN_LEDGER_PAYOUT"  # a payout transfer in the ledger the journal does not know
    MISSING_IN_LEDGER = "MISSING_IN_LEDGER"  # the journal says posted, the ledger has no transfer under the key
    LEDGER_POST_NOT_IN_JOURNAL = "LEDGER_POST_NOT_IN_JOURNAL"  # a transfer under the key of an unposted payout
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"  # ledger or InvestSuite booked another amount or currency
    REFERENCE_MISMATCH = "REFERENCE_MISMATCH"  # the ledger's reference or InvestSuite's id is not the journal's
    MISSING_TRANSACTION = "MISSING_TRANSACTION"  # no InvestSuite transaction with the external_id
    DUPLICATE_TRANSACTION = "DUPLICATE_TRANSACTION"  # more than one transaction with the external_id
    TRANSACTION_NOT_SETTLED = "TRANSACTION_NOT_SETTLED"  # its CASH_WITHDRAWAL movement is not SETTLED/EXECUTED
    PORTFOLIO_MISSING = "PORTFOLIO_MISSING"  # the portfolio of a payout past the ledger is gone
    DIVEST_NOT_CLEARED = "DIVEST_NOT_CLEARED"  # the divest amount still holds the paid amount
    HOLDINGS_NOT_UPDATED = "HOLDINGS_NOT_UPDATED"  # the cash holding is above the recorded target
    EVENT_NOT_CONFIRMED = "EVENT_NOT_CONFIRMED"  # the event was sent, but no id from InvestSuite is kept
    CASH_MISMATCH = "CASH_MISMATCH"  # book: InvestSuite cash and the ledger balance differ beyond the tolerance
    NO_LEDGER_ACCOUNT = "NO_LEDGER_ACCOUNT"  # book: the portfolio maps to an account the ledger does not have
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"  # book: the mapped account is in another currency
    # withdrawals with broker integration by InvestSuite (the job announces the bank's payouts)
    BANK_PAYOUT_NOT_DECIDED = "BANK_PAYOUT_NOT_DECIDED"  # a payout of the date no run decided (not announced, not held)
    ANNOUNCED_PAYOUT_NOT_IN_LEDGER = "ANNOUNCED_PAYOUT_NOT_IN_LEDGER"  # an announcement whose ledger payout is gone
    UNMAPPED_PORTFOLIO = "UNMAPPED_PORTFOLIO"  # book: the portfolio maps to no account (no external_id)
    ORPHAN_LEDGER_ACCOUNT = "ORPHAN_LEDGER_ACCOUNT"  # book: a customer account no portfolio maps to


@dataclass(frozen=True)
class Break:
    """One disagreement, with the figures on both sides and the evidence a person needs."""

    type: BreakType
    portfolio_id: str | None
    currency: str | None
    expected: Decimal | None = None  # the journal's (or InvestSuite's, for the book) figure
    found: Decimal | None = None  # what the other system holds
    source: str = "ledger"  # the system that disagrees: ledger / investsuite / journal
    payout_id: str | None = None
    reference: str | None = None  # ledger reference or InvestSuite transaction id
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, amounts as plain-notation strings at the currency's minor unit."""
        return {
            "type": self.type.value,
            "portfolio_id": self.portfolio_id,
            "payout_id": self.payout_id,
            "currency": self.currency,
            "expected": text(self.expected, self.currency),
            "found": text(self.found, self.currency),
            "source": self.source,
            "reference": self.reference,
            "evidence": {k: _plain(v) for k, v in self.evidence.items()},
        }


@dataclass(frozen=True)
class PayoutFacts:
    """What the journal says about one payout (its record, the steps it reached, the evidence it kept)."""

    payout_id: str
    portfolio_id: str
    currency: str
    amount: Decimal
    state: str
    reached: frozenset[str]  # ledger_posted, transaction_recorded, divest_cleared, holdings_updated, event_sent, ...
    ledger_reference: str | None = None
    transaction_id: str | None = None
    divest_target: Decimal | None = None
    holdings_target_cash: Decimal | None = None
    event_id: str | None = None
    moved_in_run: bool = False  # for a run's reconciliation: the run posted it on the ledger
    value_date: date | None = None  # the ledger value date (the payout's business date)
    #: what the job moved on the portfolio's cash after this payout: deposits announced after its holdings
    #: update (they raise the cash above its target), and whether a later payout of the portfolio exists
    #: (it takes over the divest amount and lowers the cash)
    later_credits: Decimal = ZERO
    later_payout: bool = False

    @property
    def posted(self) -> bool:
        return "ledger_posted" in self.reached

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETED"


@dataclass(frozen=True)
class LedgerFact:
    """A transfer the ledger holds under a payout's key (or on the value date)."""

    reference: str
    idempotency_key: str
    account_reference: str
    amount: Decimal
    currency: str
    value_date: date | None = None


@dataclass(frozen=True)
class TransactionFact:
    """An InvestSuite transaction found by external_id, reduced to what the check needs."""

    id: str
    status: str | None
    movements: tuple[tuple[str | None, str | None, str | None, Decimal | None], ...]  # type, status, instrument, qty


@dataclass(frozen=True)
class PortfolioFact:
    """The InvestSuite portfolio now: its divest amount and cash (None when absent or unreadable)."""

    portfolio_id: str
    found: bool
    divest: Decimal | None = None
    divest_raw: str | None = None
    cash: Decimal | None = None


@dataclass(frozen=True)
class RemoteFacts:
    """InvestSuite read back for one payout (None: not read, because no step needed it)."""

    transactions: tuple[TransactionFact, ...] | None = None
    portfolio: PortfolioFact | None = None


def needs_investsuite(payout: PayoutFacts) -> bool:
    """Whether InvestSuite must be read for this payout (only payouts that reached the ledger touched it)."""
    return payout.posted and payout.ledger_reference is not None


def match_payout(payout: PayoutFacts, transfer: LedgerFact | None, remote: RemoteFacts) -> list[Break]:
    """Every break between the journal's record of one payout, the ledger and InvestSuite."""
    found: list[Break] = []
    base: dict[str, Any] = {
        "portfolio_id": payout.portfolio_id,
        "currency": payout.currency,
        "payout_id": payout.payout_id,
    }
    found += _ledger_breaks(payout, transfer, base)
    if not payout.posted:
        return found
    if remote.transactions is not None and payout.ledger_reference is not None:
        found += _transaction_breaks(payout, remote.transactions, base)
    if remote.portfolio is not None:
        found += _portfolio_breaks(payout, remote.portfolio, base)
    if "event_sent" in payout.reached and not payout.event_id:
        found.append(Break(BreakType.EVENT_NOT_CONFIRMED, expected=payout.amount, source="investsuite", **base))
    return found


def _ledger_breaks(payout: PayoutFacts, transfer: LedgerFact | None, base: Mapping[str, Any]) -> list[Break]:
    if transfer is None:
        if payout.posted:
            reference = payout.ledger_reference
            return [Break(BreakType.MISSING_IN_LEDGER, expected=payout.amount, reference=reference, **base)]
        return []
    if not payout.posted:
        return [
            Break(
                BreakType.LEDGER_POST_NOT_IN_JOURNAL,
                expected=ZERO,
                found=transfer.amount,
                reference=transfer.reference,
                evidence={"journal_state": payout.state, "ledger_account": mask(transfer.account_reference)},
                **base,
            )
        ]
    breaks = []
    if transfer.amount != payout.amount or transfer.currency != payout.currency:
        breaks.append(
            Break(
                BreakType.AMOUNT_MISMATCH,
                expected=payout.amount,
                found=transfer.amount,
                reference=transfer.reference,
                evidence={"ledger_currency": transfer.currency},
                **base,
            )
        )
    if payout.ledger_reference is not None and transfer.reference != payout.ledger_reference:
        breaks.append(
            Break(
                BreakType.REFERENCE_MISMATCH,
                reference=transfer.reference,
                evidence={"journal_reference": payout.ledger_reference, "ledger_reference": transfer.reference},
                **base,
            )
        )
    return breaks


def _transaction_breaks(
    payout: PayoutFacts, transactions: tuple[TransactionFact, ...], base: Mapping[str, Any]
) -> list[Break]:
    recorded = "transaction_recorded" in payout.reached
    ids = [t.id for t in transactions]
    if len(transactions) > 1:
        return [
            Break(
                BreakType.DUPLICATE_TRANSACTION,
                expected=payout.amount,
                source="investsuite",
                reference=payout.ledger_reference,
                evidence={"external_id": payout.ledger_reference, "transaction_ids": ids},
                **base,
            )
        ]
    if not transactions:
        if not recorded:
            return []  # not recorded yet: the payout is still on its way (or stopped before it)
        return [
            Break(
                BreakType.MISSING_TRANSACTION,
                expected=payout.amount,
                source="investsuite",
                reference=payout.transaction_id,
                evidence={"external_id": payout.ledger_reference},
                **base,
            )
        ]
    tx = transactions[0]
    breaks = []
    if recorded and payout.transaction_id is not None and tx.id != payout.transaction_id:
        breaks.append(
            Break(
                BreakType.REFERENCE_MISMATCH,
                source="investsuite",
                reference=tx.id,
                evidence={"journal_transaction_id": payout.transaction_id, "investsuite_transaction_id": tx.id},
                **base,
            )
        )
    booked = withdrawn(tx, payout.currency)
    if len(tx.movements) != 1 or booked != payout.amount:
        breaks.append(
            Break(
                BreakType.AMOUNT_MISMATCH,
                expected=payout.amount,
                found=booked,
                source="investsuite",
                reference=tx.id,
                evidence={"movements": len(tx.movements)},
                **base,
            )
        )
    if not settled(tx):
        breaks.append(
            Break(
                BreakType.TRANSACTION_NOT_SETTLED,
                expected=payout.amount,
                found=booked,
                source="investsuite",
                reference=tx.id,
                evidence={
                    "movement_statuses": sorted(str(m[1]) for m in tx.movements),
                    "transaction_status": tx.status,
                },
                **base,
            )
        )
    return breaks


#: movement statuses that mean the cash left the portfolio (the docs: "use EXECUTED or SETTLED")
SETTLED_MOVEMENT_STATUSES = frozenset({"SETTLED", "EXECUTED"})


def settled(tx: TransactionFact) -> bool:
    """Settled by the documented contract: every movement is a CASH_WITHDRAWAL SETTLED or EXECUTED.

    The transaction's own ``status`` is response-only and computed from its movements (the docs'
    example is "COMPLETED"): it is kept as evidence, never required to take a particular value.
    """
    return bool(tx.movements) and all(
        kind == "CASH_WITHDRAWAL" and status in SETTLED_MOVEMENT_STATUSES for kind, status, _i, _q in tx.movements
    )


def withdrawn(tx: TransactionFact, currency: str) -> Decimal | None:
    """The cash the transaction withdrew in ``currency`` (minus its movements' quantities), None if unreadable."""
    total = ZERO
    for kind, _status, instrument, quantity in tx.movements:
        if kind != "CASH_WITHDRAWAL" or instrument != f"${currency}" or quantity is None:
            return None
        total -= quantity
    return total


def _portfolio_breaks(payout: PayoutFacts, portfolio: PortfolioFact, base: Mapping[str, Any]) -> list[Break]:
    if not portfolio.found:
        return [Break(BreakType.PORTFOLIO_MISSING, expected=payout.amount, source="investsuite", **base)]
    breaks = []
    if "divest_cleared" in payout.reached and not payout.later_payout:  # a later payout owns the divest now
        target = payout.divest_target or ZERO
        current = portfolio.divest
        if current is None and portfolio.divest_raw not in (None, "None", "0"):
            current = payout.amount + target  # unreadable: cannot show it was cleared
        still_holds = current is not None and (
            current >= FULL_WITHDRAWAL_THRESHOLD or current - target >= payout.amount
        )
        if current is not None and current > 0 and still_holds:
            breaks.append(
                Break(
                    BreakType.DIVEST_NOT_CLEARED,
                    expected=target,
                    found=current if current < FULL_WITHDRAWAL_THRESHOLD else None,
                    source="investsuite",
                    evidence={"divest_now": portfolio.divest_raw, "divest_target": target, "paid": payout.amount},
                    **base,
                )
            )
    if "holdings_updated" in payout.reached and payout.holdings_target_cash is not None:
        cash = portfolio.cash
        # the deposits the job announced afterwards raised the cash, as they must: the ceiling moves with them
        ceiling = payout.holdings_target_cash + payout.later_credits
        if cash is None or cash > ceiling:
            breaks.append(
                Break(
                    BreakType.HOLDINGS_NOT_UPDATED,
                    expected=ceiling,
                    found=cash,
                    source="investsuite",
                    evidence={
                        "cash_key": f"${payout.currency}",
                        "target": payout.holdings_target_cash,
                        "later_credits": payout.later_credits,
                    },
                    **base,
                )
            )
    return breaks


def unknown_ledger_payouts(transfers: Iterable[LedgerFact], known_keys: set[str]) -> list[Break]:
    """Payout transfers of the value date whose key is no payout of the journal (posted outside the job)."""
    return [
        Break(
            BreakType.UNKNOWN_LEDGER_PAYOUT,
            portfolio_id=None,
            currency=t.currency,
            expected=ZERO,
            found=t.amount,
            reference=t.reference,
            evidence={
                "idempotency_key": t.idempotency_key,
                "ledger_account": mask(t.account_reference),
                "value_date": t.value_date,
            },
        )
        for t in transfers
        if t.idempotency_key not in known_keys
    ]


def count_by_type(breaks: Iterable[Break | Mapping[str, Any]]) -> dict[str, int]:
    """Breaks per type (for summaries and logs)."""
    counts: dict[str, int] = defaultdict(int)
    for b in breaks:
        counts[b.type.value if isinstance(b, Break) else str(b["type"])] += 1
    return dict(sorted(counts.items()))


# -- helpers --------------------------------------------------------------------------------------------


def mask(reference: str) -> str:
    """An account reference safe for reports: only its last 4 characters."""
    compact = "".join(reference.split())
    return "****" + compact[-4:] if len(compact) > 4 else "****"


def text(amount: Decimal | None, currency: str | None) -> str | None:
    """A plain-notation amount at the currency's minor unit at least, never rounded (10.005 EUR stays 10.005)."""
    if amount is None:
        return None
    return format(exact(amount, currency), "f")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
