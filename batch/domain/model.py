"""Frozen values the decision policy and the executor work on, in the domain's own words."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum


class ReconciliationPolicy(StrEnum):
    """What to do when the ledger and InvestSuite disagree on the cash beyond the tolerance."""

    PAY_SMALLER = "pay_smaller"  # pay against the smaller of the two figures (always reported)
    HOLD = "hold"  # hold the payout for a person


class AccountMapping(StrEnum):
    """How a portfolio finds its core banking ledger account."""

    EXTERNAL_ID = "external_id"
    PORTFOLIO_ID = "portfolio_id"
    TEMPLATE = "template"


class Decision(StrEnum):
    PAY = "PAY"  # pay now
    DEFER = "DEFER"  # not now, a later night may pay (e.g. not enough cash yet)
    SKIP = "SKIP"  # not ours to pay (paper money, archived, ineligible status)
    HOLD = "HOLD"  # needs a human before any money moves


class Reason(StrEnum):
    """Reason codes, stable: they appear in reports, the journal and alerts."""

    # PAY
    PARTIAL = "PARTIAL"
    FULL_WITHDRAWAL = "FULL_WITHDRAWAL"
    DEPOSIT = "DEPOSIT"  # an incoming credit to move and announce
    BANK_PAYOUT = "BANK_PAYOUT"  # a payout the bank made (broker integration by InvestSuite): announce it
    # DEFER
    INSUFFICIENT_CASH = "INSUFFICIENT_CASH"
    POSITIONS_OPEN = "POSITIONS_OPEN"
    NOTHING_TO_PAY = "NOTHING_TO_PAY"
    BALANCE_CHANGED = "BALANCE_CHANGED"
    PAYOUT_IN_PROGRESS = "PAYOUT_IN_PROGRESS"
    CHANGED_SINCE_PLANNING = "CHANGED_SINCE_PLANNING"  # the fresh read before the ledger post disagreed (also SKIP)
    # SKIP
    PAPER_MONEY = "PAPER_MONEY"
    ARCHIVED = "ARCHIVED"
    DELETED = "DELETED"
    STATUS_NOT_ALLOWED = "STATUS_NOT_ALLOWED"
    NO_DIVEST_AMOUNT = "NO_DIVEST_AMOUNT"
    PORTFOLIO_INACTIVE = "PORTFOLIO_INACTIVE"  # a bus status-update to INACTIVE cancelled the open payout
    PORTFOLIO_REMOVED = "PORTFOLIO_REMOVED"  # a bus removal event cancelled the open payout
    # HOLD
    INVALID_AMOUNT = "INVALID_AMOUNT"
    UNKNOWN_CURRENCY = "UNKNOWN_CURRENCY"
    NO_LEDGER_ACCOUNT = "NO_LEDGER_ACCOUNT"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    NO_COUNTER_ACCOUNT = "NO_COUNTER_ACCOUNT"
    RECONCILIATION_BREAK = "RECONCILIATION_BREAK"
    OVER_PAYOUT_CAP = "OVER_PAYOUT_CAP"
    OVER_RUN_CAP = "OVER_RUN_CAP"
    MALFORMED_PAYLOAD = "MALFORMED_PAYLOAD"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"  # an earlier payout of this portfolio is HELD
    PAYOUT_NEEDS_ATTENTION = "PAYOUT_NEEDS_ATTENTION"  # an earlier payout of this portfolio needs a human
    INVALID_HOLDINGS = "INVALID_HOLDINGS"
    INVALID_REMOTE_DATA = "INVALID_REMOTE_DATA"  # a write built from InvestSuite's data would be refused
    # HOLD, deposits: money that cannot be announced is held, never dropped
    NO_BENEFICIARY = "NO_BENEFICIARY"  # the credit names no customer account
    UNMAPPED_ACCOUNT = "UNMAPPED_ACCOUNT"  # no portfolio maps to the customer account
    BELOW_MINOR_UNIT = "BELOW_MINOR_UNIT"  # an amount with more decimals than the currency has
    MOVE_REVERSED = "MOVE_REVERSED"  # moved, refused by InvestSuite, moved back: placing it again needs a person
    # HOLD, withdrawal announcements: InvestSuite refused the announcement of a payout for good (4xx)
    ANNOUNCEMENT_REFUSED = "ANNOUNCEMENT_REFUSED"


@dataclass(frozen=True)
class PortfolioView:
    """What the policy needs to know about one InvestSuite portfolio, already parsed.

    ``divest_raw`` is the divest amount exactly as received (Decimal when it parsed, else the raw
    text), so an invalid amount can be recorded as such. ``holdings`` maps instrument ids (ISINs and
    ``$CCY`` cash keys) to Decimal quantities; ``holdings_error`` is set when they did not parse.
    """

    portfolio_id: str
    external_id: str | None
    owner_user_id: str | None
    base_currency: str
    money_type: str
    status: str | None
    archived: bool
    deleted: bool
    divest_raw: Decimal | str | None
    holdings: Mapping[str, Decimal] = field(default_factory=dict)
    holdings_error: str | None = None
    counter_account: str | None = None

    @property
    def cash_key(self) -> str:
        return f"${self.base_currency}"

    @property
    def cash(self) -> Decimal | None:
        """The InvestSuite cash holding in the base currency (None when absent)."""
        return self.holdings.get(self.cash_key)

    @property
    def has_open_positions(self) -> bool:
        """True when a non-cash holding is not zero."""
        return any(q != 0 for key, q in self.holdings.items() if not key.startswith("$"))


@dataclass(frozen=True)
class AccountMap:
    """Which ledger account a portfolio maps to: its external_id (default), its id, or a template."""

    mapping: AccountMapping = AccountMapping.EXTERNAL_ID
    template: str = "{external_id}"

    def portfolio_key(self, account_reference: str) -> tuple[str, str] | None:
        """The other way round: ("external_id" | "portfolio_id", value) a ledger account maps from, or None."""
        if self.mapping is AccountMapping.PORTFOLIO_ID:
            return "portfolio_id", account_reference
        if self.mapping is AccountMapping.EXTERNAL_ID:
            return "external_id", account_reference
        for field_name in ("external_id", "portfolio_id"):
            marker = "{" + field_name + "}"
            if self.template.count("{") == 1 and marker in self.template:
                prefix, suffix = self.template.split(marker)
                if account_reference.startswith(prefix) and account_reference.endswith(suffix):
                    value = account_reference[len(prefix) : len(account_reference) - len(suffix)]
                    return (field_name, value) if value else None
        return None

    def account_for(self, portfolio_id: str, external_id: str | None) -> str | None:
        """The ledger account reference, or None when the mapping needs an external_id it lacks."""
        if self.mapping is AccountMapping.PORTFOLIO_ID:
            return portfolio_id
        if self.mapping is AccountMapping.TEMPLATE:
            if "{external_id}" in self.template and not external_id:
                return None
            return self.template.format(external_id=external_id or "", portfolio_id=portfolio_id)
        return external_id or None


@dataclass(frozen=True)
class LedgerView:
    """The core banking ledger's view of the account the portfolio maps to."""

    account_reference: str
    currency: str
    available: Decimal


def mask_account(value: str) -> str:
    """An account number or IBAN safe for logs and journals: only its last 4 characters (``****1234``)."""
    compact = "".join(value.split())
    if len(compact) <= 4:
        return "****"
    return "****" + compact[-4:]
