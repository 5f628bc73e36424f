"""Records as the planner leaves them, for unit tests of what happens next."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from batch.domain.payout import PayoutState
from batch.domain.records import PayoutRecord


def planned_payout(
    portfolio_id: str,
    *,
    business_date: date,
    at: datetime,
    amount: Decimal,
    cash: Decimal,
    divest: str,
    ledger_account: str,
) -> PayoutRecord:
    """A withdrawal's payout just planned: EUR, not yet attempted, nothing written anywhere."""
    return PayoutRecord(
        id=uuid.uuid4(),
        portfolio_id=portfolio_id,
        business_date=business_date,
        run_id=uuid.uuid4(),
        decision_id=1,
        state=PayoutState.PLANNED,
        stopped_in_state=None,
        currency="EUR",
        amount=amount,
        full_withdrawal=False,
        ledger_account=ledger_account,
        counter_account="BE71096123456769",
        cash_snapshot=cash,
        divest_snapshot=divest,
        hold_reason=None,
        approved_by=None,
        ledger_reference=None,
        transaction_id=None,
        divest_target=None,
        holdings_base_cash=None,
        holdings_target_cash=None,
        failing_step=None,
        last_error=None,
        attempts=0,
        lease_owner=None,
        created_at=at,
        updated_at=at,
        ledger_posted_at=None,
    )
