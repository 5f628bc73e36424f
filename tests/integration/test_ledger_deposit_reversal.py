"""Undoing a deposit move in a real ledger: once per key, the same figures back, never read as a new credit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.engine import Engine

from batch.adapters.ledger_deposits import DepositLedger, IncomingCreditError, IncomingFundsAdmin
from batch.errors import InsufficientFundsError
from tests.integration.test_ledger_deposits import ALICE, VALUE_DATE, _balance, _move, _receive, admin, deposits

__all__ = ["admin", "deposits"]  # the fixtures


def _undo(deposits: DepositLedger, credit: str) -> object:
    return deposits.reverse_deposit(
        idempotency_key=f"deposit-undo:{credit}", move_key=f"deposit:{credit}", value_date=VALUE_DATE
    )


def test_reverse_deposit_moves_the_money_back_once(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """customer -> incoming for the move's amount; a repeat of the key returns the same transfer, moves nothing."""
    credit = _receive(admin, "pay-1", "1500.00")
    moved = _move(deposits, credit, "1500.00")
    undone = deposits.reverse_deposit(
        idempotency_key=f"deposit-undo:{credit}", move_key=f"deposit:{credit}", value_date=VALUE_DATE
    )
    assert (undone.account_reference, undone.counter_account_reference) == (ALICE, "INCOMING-EUR")
    assert (undone.amount, undone.currency, undone.counterparty) == (moved.amount, "EUR", moved.counterparty)
    assert _undo(deposits, credit) == undone
    assert deposits.get_transfer(f"deposit-undo:{credit}") == undone
    assert _balance(ledger_engine, ALICE) == Decimal(0)
    assert _balance(ledger_engine, "INCOMING-EUR") == Decimal("1500.00")


def test_a_reversal_is_never_read_as_a_new_incoming_credit(admin: IncomingFundsAdmin, deposits: DepositLedger) -> None:
    """incoming_credits and credits_by_reference list the payment only, not the transfer that undid its move."""
    credit = _receive(admin, "pay-1", "100.00")
    _move(deposits, credit, "100.00")
    undone = deposits.reverse_deposit(
        idempotency_key=f"deposit-undo:{credit}", move_key=f"deposit:{credit}", value_date=VALUE_DATE
    )
    assert [c.reference for c in deposits.incoming_credits(0, 100)] == [credit]
    assert list(deposits.credits_by_reference([credit, undone.reference])) == [credit]


def test_a_reversal_needs_the_move_and_the_money(
    admin: IncomingFundsAdmin, deposits: DepositLedger, ledger_engine: Engine
) -> None:
    """No move under the key: IncomingCreditError; the customer's money held elsewhere: InsufficientFundsError."""
    credit = _receive(admin, "pay-1", "100.00")
    with pytest.raises(IncomingCreditError):
        _undo(deposits, credit)
    _move(deposits, credit, "100.00")
    admin.place_hold(ALICE, Decimal("0.01"), "card payment")
    with pytest.raises(InsufficientFundsError):
        _undo(deposits, credit)
    assert deposits.get_transfer(f"deposit-undo:{credit}") is None
    assert _balance(ledger_engine, ALICE) == Decimal("100.00")
