"""The reconciliations' read-back of InvestSuite transactions in bulk: per portfolio, ``external_id in [...]``.

The docs list transactions only under their portfolio (``/portfolios/{id}/transactions/``); no listing across
portfolios is documented. So the ids wanted are grouped by portfolio and each portfolio is read with the
documented list query, 100 ids per request (``InvestSuiteClient.transactions_by_external_id``): a portfolio
with several payouts or credits in scope costs one request instead of one per id. Each listing runs on the
reconciliation's pool; what each id finds is exactly what a lookup of that id alone (``external_id eq``) finds.
``transaction_fact`` turns each into the plain record the rules take (withdrawals and deposits alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from decimal import Decimal
from typing import Protocol

from batch.adapters.investsuite_models import RemoteTransaction
from batch.domain.money import parse_amount
from batch.errors import InvalidAmountError, NotFoundError
from batch.service.reconcile.rules import TransactionFact

#: (portfolio id, external id) -> the portfolio's transactions with that external id (several: a duplicate),
#: or None when InvestSuite does not know the portfolio (404)
FoundTransactions = dict[tuple[str, str], list[RemoteTransaction] | None]


class TransactionLister(Protocol):
    """The client's bulk read of a portfolio's transactions by external id."""

    def transactions_by_external_id(
        self, portfolio_id: str, ids: Sequence[str]
    ) -> dict[str, list[RemoteTransaction]]: ...


def transactions_of(pool: Executor, client: TransactionLister, wanted: Iterable[tuple[str, str]]) -> FoundTransactions:
    """The transactions of every (portfolio id, external id) in ``wanted``: one listing per portfolio."""
    by_portfolio: dict[str, set[str]] = {}
    for portfolio_id, external_id in wanted:
        by_portfolio.setdefault(portfolio_id, set()).add(external_id)
    portfolios = sorted(by_portfolio.items())

    def read(item: tuple[str, set[str]]) -> dict[str, list[RemoteTransaction]] | None:
        portfolio_id, ids = item
        try:
            return client.transactions_by_external_id(portfolio_id, sorted(ids))
        except NotFoundError:
            return None  # the portfolio is gone: none of its ids can be read

    found: FoundTransactions = {}
    for (portfolio_id, ids), listed in zip(portfolios, pool.map(read, portfolios), strict=True):
        for external_id in ids:
            found[(portfolio_id, external_id)] = None if listed is None else listed.get(external_id, [])
    return found


def transaction_fact(tx: RemoteTransaction) -> TransactionFact:
    """A transaction as the plain record the rules take (its movements' type, status, instrument and quantity)."""
    movements = []
    for m in tx.movements:
        try:
            quantity: Decimal | None = parse_amount(m.get("quantity"))
        except InvalidAmountError:
            quantity = None
        movements.append((_str(m.get("type")), _str(m.get("status")), _str(m.get("instrument_id")), quantity))
    return TransactionFact(tx.id, tx.status, tuple(movements))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
