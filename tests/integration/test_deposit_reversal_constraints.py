"""Migration 0011 in the journal: the undo of a deposit move is a state and a step only a client-side deposit has."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from tests.integration.test_journal_constraints import _exec, _payout, run_id

__all__ = ["run_id"]  # the fixture

_AS_DEPOSIT = """UPDATE batch.payouts SET flow = 'DEPOSIT', credit_reference = :credit, state = :state,
                        ledger_reference = :lref WHERE id = :id"""


def test_a_client_side_deposit_may_be_moved_back(journal_engine: Engine, run_id: uuid.UUID) -> None:
    """A DEPOSIT with its ledger reference reaches ANNOUNCE_REFUSED and MOVE_REVERSED; its undo is a known step."""
    payout = _payout(journal_engine, run_id, "P1")
    for state in ("ANNOUNCE_REFUSED", "MOVE_REVERSED"):
        _exec(journal_engine, _AS_DEPOSIT, credit="LT-1", state=state, lref="LT-9", id=payout)
    _exec(
        journal_engine,
        "INSERT INTO batch.step_attempts (payout_id, run_id, step, intent)"
        " VALUES (:p, :r, 'REVERSE_LEDGER_MOVE', '{}')",
        p=payout,
        r=run_id,
    )


@pytest.mark.parametrize("state", ["ANNOUNCE_REFUSED", "MOVE_REVERSED"])
def test_only_a_moved_deposit_can_be_refused_or_moved_back(
    journal_engine: Engine, run_id: uuid.UUID, state: str
) -> None:
    """A withdrawal, or a deposit without a ledger reference, in a reversal state is rejected by a CHECK."""
    with pytest.raises(IntegrityError, match="payouts_reversal_is_a_deposit_move"):
        _payout(journal_engine, run_id, "P1", state=state, ledger_reference="LT1")
    payout = _payout(journal_engine, run_id, "P2")
    with pytest.raises(IntegrityError, match="payouts_reversal_is_a_deposit_move"):
        _exec(journal_engine, _AS_DEPOSIT, credit="LT-2", state=state, lref=None, id=payout)
