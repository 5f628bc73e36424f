"""Reconcile deposits: every credit moved for a date is announced, SETTLED in InvestSuite and explained.

Part of ``batch reconcile --date`` and of every run's own reconciliation (``reconcile_deposits_into`` adds
its breaks and figures to the withdrawals' ``Reconciliation``). Read-only: SELECTs and GETs.

Rules, per deposit operation of the journal (``deposit_breaks``, pure), by what the journal says it reached:

    moved (client set-up)        one ledger transfer under ``deposit:<credit>``: incoming -> the customer's
                                 account, the operation's amount and currency, its ledger reference
    never moved                  no transfer under that key
    moved back (MOVE_REVERSED)   one transfer under ``deposit-undo:<credit>``: customer -> incoming, the same
                                 amount; InvestSuite holds no transaction for the credit
    moved, not moved back        announced (money that moved is never left unannounced)
    announced (either set-up)    exactly one InvestSuite transaction with ``external_id`` = the credit, with a
                                 ``CASH_DEPOSIT`` movement SETTLED (or EXECUTED) of the amount — judged by the
                                 movement, the transaction-level status is informative (the docs' example is
                                 "COMPLETED"); the portfolio funded (``funded_since`` set)

and per value date (``unknown_deposit_transfers``, pure): every incoming <-> customer transfer of the date
has a deposit operation of the journal behind it (``deposit:<credit>`` its move, ``deposit-undo:<credit>``
the undo of a refused one). Figures per currency say which system each comes from.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from batch.adapters.ledger import Transfer
from batch.adapters.sqlfiles import load_queries
from batch.domain.deposit import move_key, undo_key
from batch.service.context import Services
from batch.service.reconcile.rules import Break, TransactionFact, mask, text
from batch.service.reconcile.transactions import transaction_fact, transactions_of

if TYPE_CHECKING:
    from batch.service.reconcile.result import Reconciliation

Q = load_queries("journal_reconcile_deposits")
ZERO = Decimal(0)
_CHUNK = 1000
_PORTFOLIOS_PER_READ = 100
_SETTLED = frozenset({"SETTLED", "EXECUTED"})
_MOVED_STATES = frozenset({"LEDGER_MOVED", "ANNOUNCE_REFUSED", "MOVE_REVERSED", "EVENT_SENT", "COMPLETED"})


class DepositBreakType(StrEnum):
    """Deposit break codes, stable: they appear in reports, the journal and alerts."""

    DEPOSIT_MOVE_MISSING = "DEPOSIT_MOVE_MISSING"  # the journal says moved; no ledger transfer under the key
    DEPOSIT_MOVE_NOT_IN_JOURNAL = "DEPOSIT_MOVE_NOT_IN_JOURNAL"  # a move under the key of a deposit never moved
    DEPOSIT_MOVE_MISMATCH = "DEPOSIT_MOVE_MISMATCH"  # the move's accounts, amount, currency or reference differ
    DEPOSIT_NOT_ANNOUNCED = "DEPOSIT_NOT_ANNOUNCED"  # moved, neither announced nor moved back
    DEPOSIT_REVERSAL_MISSING = "DEPOSIT_REVERSAL_MISSING"  # the journal says moved back; no undo in the ledger
    DEPOSIT_EVENT_MISSING = "DEPOSIT_EVENT_MISSING"  # announced; InvestSuite holds no transaction for the credit
    DEPOSIT_DUPLICATE_TRANSACTION = "DEPOSIT_DUPLICATE_TRANSACTION"  # more than one transaction for the credit
    DEPOSIT_NOT_SETTLED = "DEPOSIT_NOT_SETTLED"  # no SETTLED/EXECUTED CASH_DEPOSIT movement of the amount
    DEPOSIT_NOT_FUNDED = "DEPOSIT_NOT_FUNDED"  # announced, but the portfolio's funded_since is not set
    DEPOSIT_ANNOUNCED_AND_REVERSED = "DEPOSIT_ANNOUNCED_AND_REVERSED"  # InvestSuite has it, the ledger moved it back
    DEPOSIT_PORTFOLIO_MISSING = "DEPOSIT_PORTFOLIO_MISSING"  # the portfolio of an announced deposit is gone (404)
    UNKNOWN_DEPOSIT_TRANSFER = "UNKNOWN_DEPOSIT_TRANSFER"  # an incoming <-> customer transfer no operation explains


B = DepositBreakType


@dataclass(frozen=True)
class DepositFacts:
    """What the journal says about one deposit operation."""

    operation_id: str
    flow: str  # DEPOSIT (client set-up) or DEPOSIT_ANNOUNCE
    state: str
    portfolio_id: str
    credit_reference: str
    currency: str
    amount: Decimal
    ledger_account: str
    ledger_reference: str | None
    value_date: date
    moved: bool  # the journal says the money moved in the ledger (client set-up)
    announced: bool  # the journal says the event was answered

    @property
    def moved_back(self) -> bool:
        return self.state == "MOVE_REVERSED"


@dataclass(frozen=True)
class DepositRemote:
    """InvestSuite as it is now for one deposit: its transactions (None: not read, or the portfolio is gone)."""

    transactions: tuple[TransactionFact, ...] | None = None
    portfolio_found: bool = True
    funded: bool | None = None  # funded_since set (None: not read)


@dataclass
class DepositFigures:
    """Per currency, each figure from its own system."""

    operations: int = 0
    moved_journal: Decimal = ZERO
    moved_ledger: Decimal = ZERO  # incoming -> customer transfers of the operations, read back
    moved_back_ledger: Decimal = ZERO  # customer -> incoming undos, read back
    announced_journal: Decimal = ZERO
    settled_investsuite: Decimal = ZERO  # SETTLED CASH_DEPOSIT quantities, read back

    def to_dict(self, currency: str) -> dict[str, Any]:
        figures = {k: v for k, v in vars(self).items() if k != "operations"}
        return {"operations": self.operations, **{k: text(v, currency) for k, v in figures.items()}}


def facts_of(row: Mapping[str, Any]) -> DepositFacts:
    """A journal row (``deposits_of_date`` / ``deposits_of_run``) as the plain record the rules take."""
    state = str(row["state"])
    moved = row["flow"] == "DEPOSIT" and (row["ledger_moved_at"] is not None or state in _MOVED_STATES)
    return DepositFacts(
        operation_id=str(row["id"]),
        flow=str(row["flow"]),
        state=state,
        portfolio_id=str(row["portfolio_id"]),
        credit_reference=str(row["credit_reference"]),
        currency=str(row["currency"]).strip(),
        amount=Decimal(row["amount"]),
        ledger_account=str(row["ledger_account"]),
        ledger_reference=row["ledger_reference"],
        value_date=row["business_date"],
        moved=moved,
        announced=row["event_sent_at"] is not None or state == "COMPLETED",
    )


def _break(kind: B, deposit: DepositFacts, source: str, **more: Any) -> Break:
    evidence = {"credit": deposit.credit_reference, "state": deposit.state, **more.pop("evidence", {})}
    return Break(
        kind,  # type: ignore[arg-type]  # a deposit break type beside the withdrawal's BreakType
        deposit.portfolio_id,
        deposit.currency,
        source=source,
        payout_id=deposit.operation_id,
        reference=more.pop("reference", deposit.credit_reference),
        evidence=evidence,
        **more,
    )


def settled_quantity(tx: TransactionFact) -> Decimal | None:
    """The quantity of the transaction's SETTLED (or EXECUTED) CASH_DEPOSIT movement, or None."""
    for kind, status, _instrument, quantity in tx.movements:
        if kind == "CASH_DEPOSIT" and status in _SETTLED and quantity is not None:
            return quantity
    return None


def deposit_breaks(
    deposit: DepositFacts, move: Transfer | None, undo: Transfer | None, remote: DepositRemote
) -> list[Break]:
    """Every disagreement about one deposit operation (see the module docstring). Pure."""
    found: list[Break] = []
    if deposit.moved and move is None:
        found.append(_break(B.DEPOSIT_MOVE_MISSING, deposit, "ledger", expected=deposit.amount))
    elif not deposit.moved and move is not None:
        found.append(_break(B.DEPOSIT_MOVE_NOT_IN_JOURNAL, deposit, "ledger", found=move.amount))
    elif move is not None:
        posted = (move.counter_account_reference, move.amount, move.currency, move.reference)
        if posted != (deposit.ledger_account, deposit.amount, deposit.currency, deposit.ledger_reference):
            evidence = {"ledger_reference": move.reference, "from": move.account_reference}
            found.append(
                _break(
                    B.DEPOSIT_MOVE_MISMATCH,
                    deposit,
                    "ledger",
                    expected=deposit.amount,
                    found=move.amount,
                    evidence=evidence,
                )
            )
    if deposit.moved_back:
        if undo is None or (undo.account_reference, undo.amount) != (deposit.ledger_account, deposit.amount):
            found.append(
                _break(B.DEPOSIT_REVERSAL_MISSING, deposit, "ledger", expected=deposit.amount, found=_amount(undo))
            )
        if remote.transactions:
            found.append(_break(B.DEPOSIT_ANNOUNCED_AND_REVERSED, deposit, "investsuite", expected=ZERO))
    elif deposit.moved and not deposit.announced and deposit.state != "ANNOUNCE_REFUSED":
        found.append(_break(B.DEPOSIT_NOT_ANNOUNCED, deposit, "journal", expected=deposit.amount))
    if deposit.announced:
        found += _investsuite_breaks(deposit, remote)
    return found


def _investsuite_breaks(deposit: DepositFacts, remote: DepositRemote) -> list[Break]:
    if not remote.portfolio_found or remote.transactions is None:
        return [_break(B.DEPOSIT_PORTFOLIO_MISSING, deposit, "investsuite", expected=deposit.amount)]
    if not remote.transactions:
        return [_break(B.DEPOSIT_EVENT_MISSING, deposit, "investsuite", expected=deposit.amount, found=ZERO)]
    if len(remote.transactions) > 1:
        ids = [t.id for t in remote.transactions]
        return [_break(B.DEPOSIT_DUPLICATE_TRANSACTION, deposit, "investsuite", evidence={"transactions": ids})]
    (tx,) = remote.transactions
    found: list[Break] = []
    quantity = settled_quantity(tx)
    if quantity != deposit.amount:
        evidence = {"transaction": tx.id, "status": tx.status}
        kind = B.DEPOSIT_NOT_SETTLED
        found.append(_break(kind, deposit, "investsuite", expected=deposit.amount, found=quantity, evidence=evidence))
    if remote.funded is False:
        found.append(_break(B.DEPOSIT_NOT_FUNDED, deposit, "investsuite"))
    return found


def _amount(transfer: Transfer | None) -> Decimal | None:
    return None if transfer is None else transfer.amount


def add_figures(
    figures: dict[str, DepositFigures],
    deposit: DepositFacts,
    move: Transfer | None,
    undo: Transfer | None,
    remote: DepositRemote,
) -> None:
    f = figures.setdefault(deposit.currency, DepositFigures())
    f.operations += 1
    if deposit.moved:
        f.moved_journal += deposit.amount
    if move is not None:
        f.moved_ledger += move.amount
    if undo is not None:
        f.moved_back_ledger += undo.amount
    if deposit.announced:
        f.announced_journal += deposit.amount
    for tx in remote.transactions or ():
        f.settled_investsuite += settled_quantity(tx) or ZERO


def unknown_deposit_transfers(
    transfers: Iterable[Transfer], operations: Mapping[str, tuple[str, str | None]]
) -> list[Break]:
    """Incoming <-> customer transfers no deposit operation explains. Pure.

    ``operations``: credit reference -> (state, ledger reference) of its client-side deposit operation. A move
    must be ``deposit:<credit>`` of an operation with that ledger reference; an undo ``deposit-undo:<credit>`` of
    an operation moved back (or being moved back).
    """
    found = []
    for t in transfers:
        credit = t.idempotency_key.removeprefix("deposit:").removeprefix("deposit-undo:")
        op = operations.get(credit)
        if t.idempotency_key == move_key(credit):
            explained = op is not None and op[1] == t.reference
        elif t.idempotency_key == undo_key(credit):
            explained = op is not None and op[0] in ("ANNOUNCE_REFUSED", "MOVE_REVERSED")
        else:
            explained = False
        if not explained:
            found.append(
                Break(
                    B.UNKNOWN_DEPOSIT_TRANSFER,  # type: ignore[arg-type]
                    None,
                    t.currency,
                    found=t.amount,
                    source="ledger",
                    reference=t.reference,
                    evidence={
                        "idempotency_key": t.idempotency_key,
                        "from": mask(t.account_reference),
                        "to": mask(t.counter_account_reference),
                        "value_date": t.value_date,
                    },
                )
            )
    return found


# -- gathering (I/O) ----------------------------------------------------------------------------------------


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _rows(app: Services, name: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    with app.journal_engine.connect() as conn:
        streamed = conn.execution_options(stream_results=True, yield_per=_CHUNK)
        for row in streamed.execute(getattr(Q, name).text, dict(params)):
            yield dict(row._mapping)


def _remote(app: Services, pool: ThreadPoolExecutor, deposits: Sequence[DepositFacts]) -> list[DepositRemote]:
    """InvestSuite for each deposit that was announced or moved: its portfolio (100 per GET), its transactions
    (listed per portfolio, 100 credit references per GET: ``reconcile.transactions``)."""
    wanted = sorted({d.portfolio_id for d in deposits if d.announced})
    portfolios: dict[str, Any] = {}
    chunks = [wanted[i : i + _PORTFOLIOS_PER_READ] for i in range(0, len(wanted), _PORTFOLIOS_PER_READ)]
    for part in pool.map(app.client.get_portfolios, chunks):
        portfolios |= part

    read = [d for d in deposits if d.announced or d.moved]
    transactions = transactions_of(pool, app.client, ((d.portfolio_id, d.credit_reference) for d in read))

    def one(deposit: DepositFacts) -> DepositRemote:
        if not (deposit.announced or deposit.moved):
            return DepositRemote()
        found = transactions[(deposit.portfolio_id, deposit.credit_reference)]
        if found is None:
            return DepositRemote(transactions=None, portfolio_found=False)
        remote = portfolios.get(deposit.portfolio_id)
        funded = None if remote is None else bool((remote.model_extra or {}).get("funded_since"))
        return DepositRemote(tuple(transaction_fact(t) for t in found), True, funded)

    return [one(deposit) for deposit in deposits]


@dataclass
class DepositReconciliation:
    """What the deposits add to a reconciliation: breaks, figures per currency, how many were checked."""

    checked: int = 0
    breaks: list[Break] = field(default_factory=list)
    figures: dict[str, DepositFigures] = field(default_factory=dict)
    value_dates: set[date] = field(default_factory=set)
    #: credits moved, refused by InvestSuite and moved back (not a break: named so a person sees them)
    moved_back: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "breaks": len(self.breaks),
            "moved_back": self.moved_back[:_CHUNK],
            "currencies": {ccy: f.to_dict(ccy) for ccy, f in sorted(self.figures.items())},
        }


def reconcile_deposits(
    app: Services, *, business_date: date | None, run_id: uuid.UUID | None, run_date: date | None = None
) -> DepositReconciliation:
    """The deposit operations of a business date (or of a run) against the ledger and InvestSuite."""
    out = DepositReconciliation()
    if run_id is None:
        rows = _rows(app, "deposits_of_date", {"business_date": business_date})
    else:
        rows = _rows(app, "deposits_of_run", {"run_id": run_id})
    ledger = app.deposit_ledger
    with ThreadPoolExecutor(max_workers=max(1, app.settings.run.concurrency), thread_name_prefix="reconcile") as pool:
        for chunk in _chunks(rows, _CHUNK):
            deposits = [facts_of(row) for row in chunk]
            out.checked += len(deposits)
            keys = [k for d in deposits for k in (move_key(d.credit_reference), undo_key(d.credit_reference))]
            transfers = ledger.transfers_by_keys(keys)
            for deposit, remote in zip(deposits, _remote(app, pool, deposits), strict=True):
                move = transfers.get(move_key(deposit.credit_reference))
                undo = transfers.get(undo_key(deposit.credit_reference))
                out.breaks += deposit_breaks(deposit, move, undo, remote)
                add_figures(out.figures, deposit, move, undo, remote)
                if deposit.moved:
                    out.value_dates.add(deposit.value_date)
                if deposit.moved_back:
                    out.moved_back.append(deposit.credit_reference)
    dates = {business_date} if run_id is None else ({run_date} | out.value_dates)
    for value_date in sorted(d for d in dates if d is not None):
        for chunk in _chunks(ledger.deposit_movements_on(value_date), _CHUNK):
            credits = sorted({t.idempotency_key.removeprefix("deposit:").removeprefix("deposit-undo:") for t in chunk})
            with app.journal_engine.connect() as conn:
                found = conn.execute(Q.operations_of_credits.text, {"references": credits}).all()
            operations = {str(r.credit_reference): (str(r.state), r.ledger_reference) for r in found}
            out.breaks += unknown_deposit_transfers(chunk, operations)
    return out


def reconcile_deposits_into(
    app: Services,
    result: Reconciliation,
    *,
    business_date: date | None,
    run_id: uuid.UUID | None,
    run_date: date | None,
) -> None:
    """Add the deposits' breaks and figures (``stats["deposits"]``) to a payouts reconciliation."""
    deposits = reconcile_deposits(app, business_date=business_date, run_id=run_id, run_date=run_date)
    result.breaks += deposits.breaks
    result.stats["deposits"] = deposits.to_dict()


def deposit_text(result: Reconciliation) -> Iterator[str]:
    """The deposits' lines of ``batch reconcile``'s text (nothing when none was in scope)."""
    stats = result.stats.get("deposits")
    if not stats or not stats["checked"]:
        return
    yield f"Deposits: {stats['checked']} operations checked, {stats['breaks']} breaks"
    heads = ("moved (journal)", "moved (ledger)", "moved back (ledger)", "announced (journal)", "SETTLED (InvestSuite)")
    yield f"  {'ccy':<4} {'ops':>5} " + " ".join(f"{h:>22}" for h in heads)
    keys = ("moved_journal", "moved_ledger", "moved_back_ledger", "announced_journal", "settled_investsuite")
    for ccy, f in stats["currencies"].items():
        yield f"  {ccy:<4} {f['operations']:>5} " + " ".join(f"{f[k]:>22}" for k in keys)
    for credit in stats.get("moved_back", []):
        yield f"  credit {credit}: moved, refused by InvestSuite, moved back to the incoming account (held)"
