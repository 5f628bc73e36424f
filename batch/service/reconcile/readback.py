"""Reconcile against the systems of record: read the journal, the ledger and InvestSuite back, match, record.

Read-only towards the ledger and InvestSuite (only GETs and SELECTs), with the run's own client, rate
limiter and bounded concurrency (threads). The rules are pure functions in ``batch.service.reconcile.rules``;
this module only gathers their inputs and records the result in the journal (``batch.reconciliations``
and one audit row), so a report rendered later shows the same figures.

- ``reconcile_payouts``: the payouts of a business date (a run's: its whole date plus the payouts of other
  dates it created or drove), streamed from
  the journal and matched 1,000 at a time (memory flat). Ledger: one query per chunk for their keys and
  one streamed query for every payout transfer of each value date, whose keys are looked up in the
  journal 1,000 at a time (to find those the journal does not know).
  InvestSuite: the portfolios of the payouts that reached the ledger, read 100 per listing request
  (``id in [...]``), and the transactions with their external ids, listed per portfolio (``external_id in
  [...]``, 100 per request; the docs list transactions only under their portfolio, ``reconcile.transactions``).
- ``reconcile_book``: every REAL_MONEY portfolio (listed page by page, following ``next``), its ``$CCY``
  cash against the balance of the ledger account it maps to: one ledger query per page, then one
  streamed query for the customer accounts no portfolio maps to.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import structlog

from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.investsuite_models import MalformedPortfolio, RemotePortfolio
from batch.adapters.ledger_reads import LedgerTransfer
from batch.domain.money import parse_amount
from batch.domain.payout import STAMP_COLUMN
from batch.errors import InvalidAmountError
from batch.service.context import Services
from batch.service.read_ahead import read_ahead
from batch.service.reconcile.announcements import reconcile_announcements
from batch.service.reconcile.book import BookAccount, BookPortfolio, match_book_account, orphan_account
from batch.service.reconcile.deposits import reconcile_deposits_into
from batch.service.reconcile.figures import add_paid, add_unknown
from batch.service.reconcile.result import Reconciliation
from batch.service.reconcile.rules import (
    LedgerFact,
    PayoutFacts,
    PortfolioFact,
    RemoteFacts,
    count_by_type,
    match_payout,
    needs_investsuite,
    unknown_ledger_payouts,
)
from batch.service.reconcile.transactions import FoundTransactions, transaction_fact, transactions_of
from batch.settings import BrokerIntegration

#: portfolios read per listing request (the API's page maximum)
_PORTFOLIOS_PER_READ = 100
log = structlog.get_logger("batch.reconcile")
T = TypeVar("T")

#: The documented query for the full book (every real-money portfolio, pending or not).
BOOK_QUERY = "money_type eq 'REAL_MONEY'"
#: payouts matched at a time (one ledger query, ten portfolio listings, a transaction listing per portfolio)
_PAYOUT_CHUNK = 1000


# -- payouts ------------------------------------------------------------------------------------------------


def payout_facts(row: Mapping[str, Any]) -> PayoutFacts:
    """A journal row (``payouts_to_reconcile``) as the plain record the rules take."""
    reached = frozenset(column.removesuffix("_at") for column in STAMP_COLUMN.values() if row.get(column))
    return PayoutFacts(
        payout_id=str(row["id"]),
        portfolio_id=row["portfolio_id"],
        currency=row["currency"].strip(),
        amount=Decimal(row["amount"]),
        state=row["state"],
        reached=reached,
        ledger_reference=row["ledger_reference"],
        transaction_id=row["transaction_id"],
        divest_target=_decimal(row["divest_target"]),
        holdings_target_cash=row["holdings_target_cash"],
        event_id=row["event_id"],
        moved_in_run=bool(row.get("moved_in_run")),
        value_date=row["business_date"],
        later_credits=Decimal(row.get("later_credits") or 0),
        later_payout=bool(row.get("later_payout")),
    )


def ledger_fact(transfer: LedgerTransfer) -> LedgerFact:
    return LedgerFact(
        transfer.reference,
        transfer.idempotency_key,
        transfer.account_reference,
        transfer.amount,
        transfer.currency,
        transfer.value_date,
    )


def portfolio_fact(remote: RemotePortfolio, currency: str) -> PortfolioFact:
    view = remote.to_view(None)
    divest = view.divest_raw if isinstance(view.divest_raw, Decimal) else None
    raw = remote.divest_amount_raw
    return PortfolioFact(
        portfolio_id=remote.id,
        found=True,
        divest=divest,
        divest_raw=None if raw is None else str(raw),
        cash=view.holdings.get(f"${currency}"),
    )


def read_back(
    payout: PayoutFacts, portfolios: Mapping[str, RemotePortfolio], transactions: FoundTransactions
) -> RemoteFacts:
    """InvestSuite as it is now for one payout: its transactions by external_id, and the portfolio.

    Both were read beforehand for the whole chunk (``_match_chunk``): the portfolios 100 per listing request
    (``id in [...]``), one missing from it is gone; the transactions per portfolio (``external_id in [...]``),
    None where the portfolio answered 404 (gone as well).
    """
    if not needs_investsuite(payout) or payout.ledger_reference is None:
        return RemoteFacts()
    remote = portfolios.get(payout.portfolio_id)
    if remote is None:
        return RemoteFacts(transactions=None, portfolio=PortfolioFact(payout.portfolio_id, found=False))
    portfolio = portfolio_fact(remote, payout.currency)
    found = transactions.get((payout.portfolio_id, payout.ledger_reference))
    if found is None:
        return RemoteFacts(transactions=None, portfolio=PortfolioFact(payout.portfolio_id, found=False))
    return RemoteFacts(transactions=tuple(transaction_fact(t) for t in found), portfolio=portfolio)


def _wanted_transactions(
    payouts: Sequence[PayoutFacts], portfolios: Mapping[str, RemotePortfolio]
) -> Iterator[tuple[str, str]]:
    """(portfolio, ledger reference) of each payout whose InvestSuite transaction is checked and portfolio found."""
    for p in payouts:
        if needs_investsuite(p) and p.ledger_reference is not None and p.portfolio_id in portfolios:
            yield p.portfolio_id, p.ledger_reference


def _portfolios_of(
    pool: ThreadPoolExecutor, client: InvestSuiteClient, payouts: Sequence[PayoutFacts]
) -> dict[str, RemotePortfolio]:
    """Every portfolio the payouts need, read 100 per request, the requests spread over the pool."""
    ids = sorted({p.portfolio_id for p in payouts if needs_investsuite(p) and p.ledger_reference is not None})
    chunks = [ids[start : start + _PORTFOLIOS_PER_READ] for start in range(0, len(ids), _PORTFOLIOS_PER_READ)]
    found: dict[str, RemotePortfolio] = {}
    for part in pool.map(client.get_portfolios, chunks):
        found |= part
    return found


def reconcile_payouts(
    app: Services,
    *,
    actor: str,
    business_date: date | None = None,
    run_id: uuid.UUID | None = None,
    record: bool = True,
) -> Reconciliation:
    """Three-way match of a business date's payouts (or a run's), recorded in the journal."""
    journal = app.journal
    run_date: date | None = None
    if run_id is not None:
        run = journal.get_run(run_id)
        if run is None:
            raise LookupError(f"no run {run_id}")
        run_date = run["business_date"]
    result = Reconciliation(
        "payouts", uuid.uuid4(), business_date or run_date, run_id, datetime.now(UTC), stats={"investsuite_calls": 0}
    )
    started = time.monotonic()
    calls_before = sum(app.client.calls.values())
    reader = app.ledger_reader
    queries_before = reader.queries
    moved_dates: set[date | None] = set()
    # a run reconciles its whole business date (any run's payouts) plus what it drove of other dates
    rows = journal.payouts_to_reconcile(business_date=business_date or run_date, run_id=run_id)
    workers = max(1, app.settings.run.concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
        for chunk in _chunks(rows, _PAYOUT_CHUNK):  # memory flat in the number of payouts
            payouts = [payout_facts(row) for row in chunk]
            result.checked += len(payouts)
            moved_dates |= _moved_dates(payouts)
            _match_chunk(app, pool, payouts, result)

    # payout transfers the journal does not know, on every value date in scope: the ledger's transfers are
    # streamed and their keys looked up in the journal 1,000 at a time (no set of every key in memory)
    value_dates = {result.business_date} if run_id is None else {run_date} | moved_dates
    for value_date in sorted(d for d in value_dates if d is not None):
        for transfers in _chunks(reader.payout_transfers_on(value_date), _PAYOUT_CHUNK):
            facts = [ledger_fact(t) for t in transfers]
            known = {str(i) for i in journal.known_payout_ids(_uuids(f.idempotency_key for f in facts))}
            result.breaks += unknown_ledger_payouts(facts, known)
    if app.settings.withdrawals.broker_integration is BrokerIntegration.INVESTSUITE:
        for value_date in sorted(d for d in value_dates if d is not None):  # the bank's payouts, announced
            announced = reconcile_announcements(journal, app.bank_payouts, value_date)
            result.checked += announced.checked
            result.breaks += announced.breaks
            result.announcements |= announced.to_dict()
    add_unknown(result.paid, result.breaks)
    result.stats = {
        "scope": "date",  # the whole business date (a run's: plus the payouts it drove of other dates)
        "investsuite_calls": sum(app.client.calls.values()) - calls_before,
        "ledger_queries": reader.queries - queries_before,
        "seconds": round(time.monotonic() - started, 3),
    }
    # deposits: the whole business date too (a run's deposit operations all carry its business date)
    reconcile_deposits_into(app, result, business_date=business_date or run_date, run_id=None, run_date=None)
    if record:
        _record(app, result, actor)
    log.info(
        "reconcile.finished",
        kind="payouts",
        business_date=str(result.business_date),
        run_id=str(run_id) if run_id else None,
        checked=result.checked,
        breaks=len(result.breaks),
        break_types=count_by_type(result.breaks),
    )
    return result


def _match_chunk(
    app: Services, pool: ThreadPoolExecutor, payouts: Sequence[PayoutFacts], result: Reconciliation
) -> None:
    """One chunk: its ledger transfers (one query), its portfolios (100 per GET), their transactions (one listing
    per portfolio, 100 external ids per GET)."""
    transfers = app.ledger_reader.transfers_by_keys([p.payout_id for p in payouts])
    portfolios = _portfolios_of(pool, app.client, payouts)
    transactions = transactions_of(pool, app.client, _wanted_transactions(payouts, portfolios))
    for payout in payouts:
        facts = read_back(payout, portfolios, transactions)
        transfer = transfers.get(payout.payout_id)
        fact = ledger_fact(transfer) if transfer is not None else None
        result.breaks += match_payout(payout, fact, facts)
        add_paid(result.paid, payout, fact, facts)


def _chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """``rows`` in lists of ``size`` (``itertools.batched`` is Python 3.12)."""
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _moved_dates(payouts: Sequence[PayoutFacts]) -> set[date | None]:
    """Value dates of the payouts a run posted itself (a carried-over payout keeps its own business date)."""
    return {p.value_date for p in payouts if p.moved_in_run}


def _uuids(keys: Iterable[str]) -> list[uuid.UUID]:
    found = []
    for key in keys:
        try:
            found.append(uuid.UUID(key))
        except ValueError:
            continue
    return found


# -- a business date, every flow ------------------------------------------------------------------------


class DateReconciler(Protocol):
    """One flow's reconciliation of a business date (or of a run's scope), recorded and returned."""

    def __call__(
        self, app: Services, *, actor: str, business_date: date | None = None, run_id: uuid.UUID | None = None
    ) -> Reconciliation: ...


#: the per-flow reconcilers ``batch reconcile --date`` runs, in order (withdrawals first): another flow
#: (deposits) adds its own here, each recorded as its own reconciliation and shown as its own section
DATE_RECONCILERS: list[DateReconciler] = [reconcile_payouts]


def reconcile_date(
    app: Services, *, actor: str, business_date: date | None = None, run_id: uuid.UUID | None = None
) -> list[Reconciliation]:
    """Every flow's reconciliation of the date (or of the run's scope), in ``DATE_RECONCILERS`` order."""
    return [reconcile(app, actor=actor, business_date=business_date, run_id=run_id) for reconcile in DATE_RECONCILERS]


# -- the full book ------------------------------------------------------------------------------------------


def reconcile_book(app: Services, *, actor: str, record: bool = True, page_size: int | None = None) -> Reconciliation:
    """Every REAL_MONEY portfolio's ``$CCY`` cash against the ledger balance of its mapped account."""
    result = Reconciliation("book", uuid.uuid4(), None, None, datetime.now(UTC))
    started = time.monotonic()
    tolerance = app.settings.policy.reconciliation_tolerance
    accounts = app.settings.policy.account_map()
    reader = app.ledger_reader
    queries_before, calls_before = reader.queries, sum(app.client.calls.values())
    mapped: set[str] = set()
    pages = unreadable = 0
    for page in read_ahead(
        app.client.iter_portfolio_pages(BOOK_QUERY, page_size=page_size, embed_owner=False), "book-read-ahead"
    ):
        pages += 1
        listed: list[BookPortfolio] = []
        for item in page.items:
            if isinstance(item, MalformedPortfolio):
                unreadable += 1
                continue
            view = item.to_view(None)
            reference = accounts.account_for(view.portfolio_id, view.external_id)
            listed.append(BookPortfolio(view.portfolio_id, view.base_currency, view.cash, reference))
        references = [p.account_reference for p in listed if p.account_reference]
        found = reader.accounts(references)
        mapped.update(references)
        for portfolio in listed:
            account = found.get(portfolio.account_reference or "")
            book_account = (
                BookAccount(account.reference, account.currency, account.kind, account.balance, account.available)
                if account is not None
                else None
            )
            problem = match_book_account(portfolio, book_account, tolerance, result.book)
            if problem is not None:
                result.breaks.append(problem)
        result.checked += len(listed)
    orphans = 0
    for reference, currency, balance in reader.customer_accounts():
        orphan = orphan_account(reference, currency, balance, mapped)
        if orphan is not None:
            orphans += 1
            result.breaks.append(orphan)
    result.stats = {
        "pages": pages,
        "unreadable_portfolios": unreadable,
        "orphan_accounts": orphans,
        "investsuite_calls": sum(app.client.calls.values()) - calls_before,
        "ledger_queries": reader.queries - queries_before,
        "seconds": round(time.monotonic() - started, 3),
    }
    if record:
        _record(app, result, actor)
    log.info(
        "reconcile.finished",
        kind="book",
        checked=result.checked,
        breaks=len(result.breaks),
        break_types=count_by_type(result.breaks),
        **{k: v for k, v in result.stats.items() if k != "seconds"},
    )
    return result


def _record(app: Services, result: Reconciliation, actor: str) -> None:
    result.finished_at = app.journal.record_reconciliation(
        reconciliation_id=result.id,
        kind=result.kind,
        business_date=result.business_date,
        run_id=result.run_id,
        actor=actor,
        started_at=result.started_at,
        checked=result.checked,
        figures=result.figures(),
        breaks=[b.to_dict() for b in result.breaks],
    )


def _decimal(value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        return parse_amount(value)
    except InvalidAmountError:
        return None
