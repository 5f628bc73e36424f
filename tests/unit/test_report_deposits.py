"""The deposits section's buckets for stopped deposits: money refused after the move is held, never announced."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from batch.service.reports.deposits import DepositLine

LINE = DepositLine(
    credit_reference="LT-1",
    portfolio_id="P1",
    decision="PAY",
    reason="DEPOSIT",
    currency="EUR",
    amount=Decimal("1500.00"),
    flow="DEPOSIT",
    state="COMPLETED",
    ledger_reference="LT-9",
    failing_step=None,
    last_error=None,
    still_held=False,
    carried_over=False,
    note=None,
)


@pytest.mark.parametrize(
    ("changes", "bucket", "kind"),
    [
        ({}, "announced", None),
        ({"state": "LEDGER_MOVED"}, "in_progress", None),
        ({"state": "ANNOUNCE_REFUSED", "decision": "HOLD", "reason": "ARCHIVED"}, "held", "held"),
        ({"state": "MOVE_REVERSED", "decision": "HOLD", "reason": "DELETED"}, "held", "held"),
        ({"state": "MOVE_REVERSED"}, "held", "held"),  # even before its decision was revised (a crash between)
        ({"state": "NEEDS_ATTENTION"}, "held", "needs_attention"),
        ({"state": None, "decision": "HOLD", "reason": "PAYOUT_NEEDS_ATTENTION"}, "held", "needs_attention"),
        ({"state": None, "decision": "HOLD", "reason": "ARCHIVED", "still_held": True}, "held", "still_held"),
    ],
    ids=["completed", "moving", "refused", "moved-back", "moved-back-unrevised", "attention", "listed", "still"],
)
def test_each_deposit_state_lands_in_one_bucket(changes: dict[str, object], bucket: str, kind: str | None) -> None:
    """A credit refused after its move is held (an exception); one whose operation needs a person says so."""
    line = replace(LINE, **changes)  # type: ignore[arg-type]
    assert (line.bucket, line.exception_kind) == (bucket, kind)
