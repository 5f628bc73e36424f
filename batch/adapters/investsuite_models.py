"""Validated shapes of what InvestSuite returns: portfolios, users, transactions, event receipts, pages.

Every model allows and preserves unknown fields (``extra="allow"``): the API grows, and the job
must send nested objects back whole (``config``, the holdings map) without losing anything.
Numbers arrive already parsed as ``Decimal`` (the client reads JSON with ``parse_float=Decimal``);
numeric strings stay strings in the raw documents and are parsed by ``batch.domain.money``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batch.domain.model import PortfolioView
from batch.domain.money import parse_amount
from batch.errors import InvalidAmountError


class _Remote(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)


class CounterAccount(_Remote):
    """The bank account a customer's withdrawals go to (``user.counter_account``)."""

    bank_account_number: str | None = None
    bank_account_number_type: str | None = None
    bank_id: str | None = None
    bank_id_type: str | None = None


class RemoteUser(_Remote):
    """An InvestSuite user; only the counter account matters to the payout job."""

    id: str
    counter_account: CounterAccount | None = None


class RemoteTransaction(_Remote):
    """An InvestSuite transaction as returned by ``POST``/``GET .../transactions/``."""

    id: str
    external_id: str | None = None
    portfolio_id: str | None = None
    status: str | None = None
    movements: list[dict[str, Any]] = Field(default_factory=list)


class RemotePortfolio(_Remote):
    """An InvestSuite portfolio. ``config`` and ``portfolio`` (holdings) are kept raw and whole."""

    id: str = Field(min_length=1)
    external_id: str | None = None
    name: str | None = None
    owned_by_user_id: str | None = None
    base_currency: str = Field(min_length=1)
    money_type: str = Field(min_length=1)
    archived: bool = False
    deleted: bool = False
    status: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    portfolio: dict[str, Any] = Field(default_factory=dict)
    version: int | None = None

    @property
    def divest_amount_raw(self) -> Any:
        """``config.manager_settings.divest_amount`` exactly as received (None when absent)."""
        settings = self.config.get("manager_settings")
        if not isinstance(settings, dict):
            return None
        return settings.get("divest_amount")

    def to_view(self, counter_account: str | None) -> PortfolioView:
        """The domain's frozen view: divest amount and holdings parsed to Decimal where possible."""
        raw = self.divest_amount_raw
        divest: Decimal | str | None
        if raw is None:
            divest = None
        else:
            try:
                divest = parse_amount(raw)
            except InvalidAmountError:
                divest = str(raw)
        holdings: dict[str, Decimal] = {}
        problems: list[str] = []
        for instrument, quantity in self.portfolio.items():
            try:
                holdings[str(instrument)] = parse_amount(quantity)
            except InvalidAmountError as exc:
                problems.append(f"{instrument}: {exc}")
        return PortfolioView(
            portfolio_id=self.id,
            external_id=self.external_id,
            owner_user_id=self.owned_by_user_id,
            base_currency=self.base_currency,
            money_type=self.money_type,
            status=self.status,
            archived=self.archived,
            deleted=self.deleted,
            divest_raw=divest,
            holdings=holdings,
            holdings_error="; ".join(problems) if problems else None,
            counter_account=counter_account,
        )


@dataclass(frozen=True)
class MalformedPortfolio:
    """A result on a page that did not validate; kept so the planner can record a decision for it."""

    raw: Any
    portfolio_id: str | None
    error: str


@dataclass(frozen=True)
class EventReceipt:
    """InvestSuite's answer to ``POST /events/withdraw/`` (body undocumented, kept raw)."""

    idempotency_key: str
    status_code: int
    body: Any = None

    @property
    def event_id(self) -> str | None:
        """The id InvestSuite gave the event (kept by the journal: the reconcile's evidence it was accepted)."""
        value = self.body.get("id") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class PortfolioPage:
    """One page of the pending-withdrawal listing, with the owners embedded in it."""

    items: list[RemotePortfolio | MalformedPortfolio]
    users: dict[str, RemoteUser] = field(default_factory=dict)
    next_url: str | None = None
    page_number: int = 1
    count: str | None = None
    offset: str | None = None
