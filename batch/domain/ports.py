"""The ports the flows' steps call through: InvestSuite and the core banking ledger, as protocols.

The real adapters (``batch.adapters.investsuite.InvestSuiteClient``, ``batch.adapters.ledger.Ledger``)
satisfy them structurally; unit tests use in-memory fakes (``tests/fakes.py``) that can crash at every
step boundary. The ports raise the job's error tree (``batch.errors``): transient errors for what may
go away on a retry, ``NotFoundError`` for a portfolio that is gone, ``RemotePermanentError`` for a
refusal, ``InsufficientFundsError`` for a ledger account that cannot pay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from batch.domain.model import PortfolioView


class PortfolioRead(Protocol):
    """A portfolio as InvestSuite served it: raw ``config`` and ``portfolio`` kept whole, parsed on demand."""

    @property
    def id(self) -> str: ...

    @property
    def config(self) -> Any: ...

    @property
    def portfolio(self) -> Any: ...

    @property
    def version(self) -> int | None: ...

    def to_view(self, counter_account: str | None) -> PortfolioView: ...


class TransactionRead(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def external_id(self) -> str | None: ...

    @property
    def movements(self) -> list[dict[str, Any]]: ...


class EventAnswer(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def event_id(self) -> str | None: ...


class TransferRead(Protocol):
    """A posted ledger transfer."""

    @property
    def reference(self) -> str: ...

    @property
    def amount(self) -> Decimal: ...

    @property
    def currency(self) -> str: ...


class InvestSuitePort(Protocol):
    def get_portfolio(self, portfolio_id: str) -> PortfolioRead: ...

    def find_transactions(self, portfolio_id: str, external_id: str) -> Sequence[TransactionRead]: ...

    def create_transaction(self, portfolio_id: str, body: dict[str, Any]) -> TransactionRead: ...

    def patch_portfolio(self, portfolio_id: str, fields: dict[str, Any]) -> PortfolioRead: ...

    def post_event(self, kind: Literal["withdraw", "deposit"], *, idempotency_key: str, body: Any) -> EventAnswer: ...


class LedgerPort(Protocol):
    def get_transfer(self, idempotency_key: str) -> TransferRead | None: ...

    def post_payout(
        self,
        *,
        idempotency_key: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
        counterparty: str,
        description: str,
    ) -> TransferRead: ...

    def move_deposit(
        self,
        *,
        idempotency_key: str,
        credit_reference: str,
        account_reference: str,
        amount: Decimal,
        currency: str,
        value_date: date,
    ) -> TransferRead: ...

    def reverse_deposit(self, *, idempotency_key: str, move_key: str, value_date: date) -> TransferRead:
        """Undo the move posted under ``move_key`` (customer -> incoming account, same amount), once per key."""
        ...


@dataclass(frozen=True)
class Ports:
    """Everything a step may call, and the clock."""

    investsuite: InvestSuitePort
    ledger: LedgerPort
    clock: Callable[[], datetime]
