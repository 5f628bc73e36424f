"""The decision policy: a pure function from (portfolio, ledger view, policy, run totals) to a verdict.

No I/O, no clock: everything it needs is passed in, so every money scenario is a one-line table
row in the unit tests. The rules, in order (first match wins):

1. not ours to pay -> SKIP: deleted, not REAL_MONEY, archived, status not allowed
2. cannot be read safely -> HOLD: unknown currency, invalid divest amount, unreadable holdings
3. nothing asked -> SKIP NO_DIVEST_AMOUNT
4. nowhere to pay -> HOLD: no counter account, no ledger account, ledger currency differs
5. cash = min(ledger available, InvestSuite cash); a difference beyond the tolerance is a
   reconciliation break (always flagged; HOLD under the strict policy)
6. full withdrawal (>= 1e100): DEFER while non-cash positions are open, else pay all the cash
   partial: the divest amount rounded DOWN to the minor unit; DEFER when cash is short
7. caps: HOLD (with a held payout an operator may approve) above the per-payout or per-run cap
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from batch.domain.model import Decision, LedgerView, PortfolioView, Reason, ReconciliationPolicy
from batch.domain.money import (
    ABSURD_AMOUNT,
    FULL_WITHDRAWAL_THRESHOLD,
    MINOR_UNITS,
    quantize_down,
)


@dataclass(frozen=True)
class Policy:
    """The policy settings the decision needs, as frozen values (built from settings by the bootstrap)."""

    allowed_statuses: frozenset[str] = frozenset({"ACTIVE"})
    reconciliation_tolerance: Decimal = Decimal("0")
    reconciliation_policy: ReconciliationPolicy = ReconciliationPolicy.PAY_SMALLER
    max_payout: Mapping[str, Decimal] = field(default_factory=dict)
    max_run_total: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The decision for one candidate, with every figure it was based on.

    ``requested`` is the payable request: the divest amount rounded down to the minor unit, or for
    a full withdrawal the cash it resolves to; None when the amount is invalid. ``pay_amount`` is
    set for PAY, and for a HOLD that creates a held payout (``held_payout``) an operator may approve.
    """

    decision: Decision
    reason: Reason
    currency: str | None
    requested: Decimal | None = None
    full_withdrawal: bool = False
    pay_amount: Decimal | None = None
    held_payout: bool = False
    ledger_available: Decimal | None = None
    investsuite_cash: Decimal | None = None
    reconciliation_break: bool = False
    note: str = ""


def decide(
    portfolio: PortfolioView,
    ledger: LedgerView | None,
    policy: Policy,
    business_date: date,
    run_totals: Mapping[str, Decimal] | None = None,
) -> Verdict:
    """Decide what to do with one pending withdrawal. Pure; ``run_totals`` = PAY totals so far."""
    del business_date  # part of the signature: rules by date (cut-offs, holidays) belong here
    run_totals = run_totals or {}
    currency = portfolio.base_currency

    def verdict(decision: Decision, reason: Reason, note: str = "", **figures: Any) -> Verdict:
        return Verdict(decision, reason, currency, note=note, **figures)

    # 1. not ours to pay
    if portfolio.deleted:
        return verdict(Decision.SKIP, Reason.DELETED)
    if portfolio.money_type != "REAL_MONEY":
        return verdict(Decision.SKIP, Reason.PAPER_MONEY, f"money_type={portfolio.money_type}")
    if portfolio.archived:
        return verdict(Decision.SKIP, Reason.ARCHIVED)
    if portfolio.status not in policy.allowed_statuses:
        return verdict(Decision.SKIP, Reason.STATUS_NOT_ALLOWED, f"status={portfolio.status}")

    # 2. cannot be read safely
    if currency not in MINOR_UNITS:
        return verdict(Decision.HOLD, Reason.UNKNOWN_CURRENCY, f"currency={currency!r}")
    raw = portfolio.divest_raw
    if raw is None:
        return verdict(Decision.SKIP, Reason.NO_DIVEST_AMOUNT)
    if isinstance(raw, str):
        return verdict(Decision.HOLD, Reason.INVALID_AMOUNT, f"divest_amount={raw[:40]!r} is not a number")
    if raw < 0:
        return verdict(Decision.HOLD, Reason.INVALID_AMOUNT, f"divest_amount={raw} is negative")
    if ABSURD_AMOUNT < raw < FULL_WITHDRAWAL_THRESHOLD:
        return verdict(Decision.HOLD, Reason.INVALID_AMOUNT, f"divest_amount={raw:.6E} is absurd")
    if portfolio.holdings_error:
        return verdict(Decision.HOLD, Reason.INVALID_HOLDINGS, portfolio.holdings_error)
    is_cash_raw = portfolio.cash if portfolio.cash is not None else Decimal(0)
    if is_cash_raw < 0:
        return verdict(Decision.HOLD, Reason.INVALID_HOLDINGS, f"negative cash holding {is_cash_raw}")
    if is_cash_raw > ABSURD_AMOUNT or (ledger is not None and abs(ledger.available) > ABSURD_AMOUNT):
        return verdict(Decision.HOLD, Reason.INVALID_HOLDINGS, "absurd cash figure (InvestSuite or ledger)")

    # 3. nothing asked
    if raw == 0:
        return verdict(Decision.SKIP, Reason.NO_DIVEST_AMOUNT)

    full = raw >= FULL_WITHDRAWAL_THRESHOLD
    is_cash = quantize_down(is_cash_raw, currency)
    partial_request = None if full else quantize_down(raw, currency)
    if partial_request is not None and partial_request == 0:
        return verdict(
            Decision.HOLD, Reason.INVALID_AMOUNT, f"divest_amount={raw} is below the minor unit of {currency}"
        )

    # 4. nowhere to pay
    base: dict[str, Any] = {"full_withdrawal": full, "investsuite_cash": is_cash}
    if full:
        ledger_cash_seen = None if ledger is None else quantize_down(ledger.available, currency)
        base["requested"] = is_cash if ledger_cash_seen is None else min(is_cash, ledger_cash_seen)
    else:
        base["requested"] = partial_request
    if portfolio.counter_account is None:
        return verdict(Decision.HOLD, Reason.NO_COUNTER_ACCOUNT, **base)
    if ledger is None:
        return verdict(Decision.HOLD, Reason.NO_LEDGER_ACCOUNT, **base)
    ledger_cash = quantize_down(ledger.available, currency)
    base["ledger_available"] = ledger_cash
    if ledger.currency != currency:
        return verdict(Decision.HOLD, Reason.CURRENCY_MISMATCH, f"ledger account in {ledger.currency}", **base)

    # 5. reconciliation
    gap = abs(ledger_cash - is_cash)
    reconciliation_break = gap > policy.reconciliation_tolerance
    base["reconciliation_break"] = reconciliation_break
    note = f"ledger {ledger_cash} vs InvestSuite {is_cash}" if reconciliation_break else ""
    if reconciliation_break and policy.reconciliation_policy is ReconciliationPolicy.HOLD:
        return verdict(Decision.HOLD, Reason.RECONCILIATION_BREAK, note, **base)
    cash = min(ledger_cash, is_cash)

    # 6. how much
    if full:
        if portfolio.has_open_positions:
            return verdict(Decision.DEFER, Reason.POSITIONS_OPEN, note, **base)
        if cash <= 0:
            return verdict(Decision.DEFER, Reason.NOTHING_TO_PAY, note, **base)
        amount, reason = cash, Reason.FULL_WITHDRAWAL
    else:
        assert partial_request is not None
        if cash < partial_request:
            return verdict(Decision.DEFER, Reason.INSUFFICIENT_CASH, note or f"cash {cash}", **base)
        amount, reason = partial_request, Reason.PARTIAL

    # 7. caps
    cap = policy.max_payout.get(currency)
    if cap is not None and amount > cap:
        return verdict(
            Decision.HOLD,
            Reason.OVER_PAYOUT_CAP,
            f"{amount} > cap {cap}",
            pay_amount=amount,
            held_payout=True,
            **base,
        )
    run_cap = policy.max_run_total.get(currency)
    if run_cap is not None and run_totals.get(currency, Decimal(0)) + amount > run_cap:
        return verdict(
            Decision.HOLD,
            Reason.OVER_RUN_CAP,
            f"run total would exceed {run_cap}",
            pay_amount=amount,
            held_payout=True,
            **base,
        )
    return verdict(Decision.PAY, reason, note, pay_amount=amount, **base)
