"""The fresh read right before money moves: is the planned payout still what the customer asks for?

Planning can be twenty minutes old when a payout reaches the ledger. ``recheck`` compares the plan with
a fresh GET of the portfolio (DESIGN §9.3) and says why the payout must not be paid now — or None when
it may. A changed payout is CANCELLED before any effect and the portfolio is decided afresh by the next
planning; a raised divest amount is not a change (the planned amount is paid, the rest stays pending).

    gone (404, deleted), archived, no longer REAL_MONEY, status no longer allowed   -> SKIP
    divest cleared (null or 0)                                                    -> SKIP
    divest lowered below the planned amount, full withdrawal turned partial,
    base currency changed, positions re-opened under a full withdrawal,
    InvestSuite cash below the amount                                             -> DEFER
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batch.domain.model import Decision, PortfolioView, Reason
from batch.domain.money import FULL_WITHDRAWAL_THRESHOLD, quantize_down
from batch.domain.policy import Policy
from batch.domain.records import PayoutRecord


@dataclass(frozen=True)
class Change:
    """Why a planned payout is not paid now, with the evidence for the journal and the report."""

    decision: Decision
    what: str
    evidence: dict[str, Any] = field(default_factory=dict)
    reason: Reason = Reason.CHANGED_SINCE_PLANNING


def recheck(payout: PayoutRecord, now: PortfolioView | None, policy: Policy) -> Change | None:
    """None when the planned payout may be paid as planned; else what changed since planning."""
    planned: dict[str, Any] = {
        "planned_amount": payout.amount,
        "planned_divest": payout.divest_snapshot,
        "currency": payout.currency,
    }

    def change(decision: Decision, what: str, **seen: Any) -> Change:
        return Change(decision, what, {**planned, **seen})

    if now is None:
        return change(Decision.SKIP, "portfolio no longer exists (404)")
    if now.deleted:
        return change(Decision.SKIP, "portfolio deleted", deleted=True)
    if now.money_type != "REAL_MONEY":
        return change(Decision.SKIP, f"money_type is now {now.money_type}", money_type=now.money_type)
    if now.archived:
        return change(Decision.SKIP, "portfolio archived", archived=True)
    if now.status not in policy.allowed_statuses:
        return change(Decision.SKIP, f"status is now {now.status}", status=now.status)
    if now.base_currency != payout.currency:
        return change(Decision.DEFER, f"base currency is now {now.base_currency}", base_currency=now.base_currency)
    divest = now.divest_raw
    seen: dict[str, Any] = {"divest_now": str(divest)}
    if divest is None or (isinstance(divest, Decimal) and divest == 0):
        return change(Decision.SKIP, "withdrawal cancelled (divest amount cleared)", **seen)
    if not isinstance(divest, Decimal) or divest < 0:
        return change(Decision.DEFER, f"divest amount is now unreadable: {str(divest)[:40]!r}", **seen)
    if payout.full_withdrawal:
        if divest < FULL_WITHDRAWAL_THRESHOLD:
            return change(Decision.DEFER, f"full withdrawal became a partial one ({divest})", **seen)
        if now.has_open_positions:
            return change(Decision.DEFER, "positions re-opened under a full withdrawal", **seen)
    elif divest < FULL_WITHDRAWAL_THRESHOLD and quantize_down(divest, payout.currency) < payout.amount:
        return change(Decision.DEFER, f"divest amount lowered to {divest} (planned {payout.amount})", **seen)
    cash = now.cash if now.cash is not None else Decimal(0)
    if cash < payout.amount:
        return change(Decision.DEFER, f"InvestSuite cash {cash} is below the amount", investsuite_cash=cash, **seen)
    return None
