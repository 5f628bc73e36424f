"""Records of the journal, as the domain sees them: a payout, a decision row, a payout to create.

Plain frozen values; the journal adapter builds them from rows (``from_mapping``) and the service
layer works on them without knowing any SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from batch.domain.payout import FlowKind, PayoutState


@dataclass(frozen=True)
class PayoutRecord:
    """One operation of a flow (a row of batch.payouts): a withdrawal's payout or a deposit.

    Deposits carry ``credit_reference`` (the incoming credit's ledger reference) and no counter account
    or divest snapshot; withdrawals the reverse.
    """

    id: uuid.UUID
    portfolio_id: str
    business_date: date
    run_id: uuid.UUID
    decision_id: int
    state: PayoutState
    stopped_in_state: str | None
    currency: str
    amount: Decimal
    full_withdrawal: bool
    ledger_account: str
    counter_account: str | None
    cash_snapshot: Decimal
    divest_snapshot: str | None
    hold_reason: str | None
    approved_by: str | None
    ledger_reference: str | None
    transaction_id: str | None
    divest_target: str | None
    holdings_base_cash: Decimal | None
    holdings_target_cash: Decimal | None
    failing_step: str | None
    last_error: str | None
    attempts: int
    lease_owner: str | None
    created_at: datetime
    updated_at: datetime
    ledger_posted_at: datetime | None
    flow: FlowKind = FlowKind.WITHDRAWAL
    credit_reference: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[Any, Any]) -> PayoutRecord:
        values = {f.name: data[f.name] for f in fields(cls)}
        values["state"] = PayoutState(values["state"])
        values["flow"] = FlowKind(values["flow"])
        values["currency"] = values["currency"].strip()
        return cls(**values)


@dataclass(frozen=True)
class DecisionRow:
    """One decision of a run about one candidate: a portfolio's withdrawal, or an incoming credit."""

    portfolio_id: str | None
    decision: str
    reason: str
    currency: str | None
    requested_raw: str | None
    requested_amount: Decimal | None
    full_withdrawal: bool
    ledger_account: str | None
    ledger_available: Decimal | None
    investsuite_cash: Decimal | None
    pay_amount: Decimal | None
    reconciliation_break: bool
    details: Mapping[str, Any]
    flow: FlowKind = FlowKind.WITHDRAWAL
    credit_reference: str | None = None

    @property
    def key(self) -> str:
        """What the run decides once: the portfolio (withdrawals) or the incoming credit (deposits)."""
        key = self.credit_reference if self.flow is not FlowKind.WITHDRAWAL else self.portfolio_id
        assert key is not None
        return key


@dataclass(frozen=True)
class NewPayout:
    """A payout to create together with its decision (PAY -> PLANNED, capped HOLD -> HELD)."""

    id: uuid.UUID
    portfolio_id: str
    state: PayoutState
    currency: str
    amount: Decimal
    full_withdrawal: bool
    ledger_account: str
    counter_account: str | None
    cash_snapshot: Decimal
    divest_snapshot: str | None
    hold_reason: str | None = None
    flow: FlowKind = FlowKind.WITHDRAWAL
    credit_reference: str | None = None
