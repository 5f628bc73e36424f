"""Read-only access to the core banking ledger for reconciliation: transfers and balances, read back.

Separate from ``ledger.Ledger`` (the payout port, which posts): nothing here writes. Queries are the
named queries of ``sql/queries/ledger_reads.sql``; each read is one query for many keys or accounts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from batch.adapters.ledger import translated
from batch.adapters.sqlfiles import load_queries

Q = load_queries("ledger_reads")


@dataclass(frozen=True)
class LedgerTransfer:
    """A transfer as the ledger holds it (the reconcile's evidence)."""

    reference: str
    idempotency_key: str
    account_reference: str
    amount: Decimal
    currency: str
    value_date: date
    into_clearing: bool


@dataclass(frozen=True)
class LedgerAccount:
    """An account's balance and available cash (balance minus active holds)."""

    reference: str
    currency: str
    kind: str
    balance: Decimal
    available: Decimal


def _transfer(row: Any) -> LedgerTransfer:
    return LedgerTransfer(
        reference=row.reference,
        idempotency_key=row.idempotency_key,
        account_reference=row.account_reference,
        amount=Decimal(row.amount),
        currency=row.currency.strip(),
        value_date=row.value_date,
        into_clearing=row.credit_kind == "PAYOUT_CLEARING",
    )


class LedgerReader:
    """Read-only queries of the ledger; translated errors as for the payout port."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        #: queries sent (the book reconcile's target is one per page)
        self.queries = 0

    def transfers_by_keys(self, keys: Sequence[str]) -> dict[str, LedgerTransfer]:
        """The transfers posted under these idempotency keys, in one query (absent keys are missing)."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        self.queries += 1
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.transfers_by_keys.text, {"keys": wanted}).all()
        return {row.idempotency_key: _transfer(row) for row in rows}

    def payout_transfers_on(self, value_date: date) -> Iterator[LedgerTransfer]:
        """Every customer -> payout clearing transfer of the value date, whoever posted it (streamed)."""
        self.queries += 1
        with translated(self._engine.url), self._engine.connect() as conn:
            streamed = conn.execution_options(stream_results=True, yield_per=1000)
            for row in streamed.execute(Q.payout_transfers_on.text, {"value_date": value_date}):
                yield _transfer(row)

    def accounts(self, references: Sequence[str]) -> dict[str, LedgerAccount]:
        """Balance and available cash of these accounts, in one query (unknown references are missing)."""
        refs = sorted(set(references))
        if not refs:
            return {}
        self.queries += 1
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execute(Q.accounts_by_reference.text, {"refs": refs}).all()
        return {
            row.reference: LedgerAccount(
                row.reference, row.currency.strip(), row.kind, Decimal(row.balance), Decimal(row.available)
            )
            for row in rows
        }

    def customer_accounts(self) -> Iterator[tuple[str, str, Decimal]]:
        """(reference, currency, balance) of every customer investment cash account, streamed."""
        self.queries += 1
        with translated(self._engine.url), self._engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(Q.customer_accounts.text)
            for row in rows:
                yield row.reference, row.currency.strip(), Decimal(row.balance)
