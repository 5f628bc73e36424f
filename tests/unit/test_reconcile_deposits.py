"""Deposit reconciliation rules on hand-made records: each disagreement between journal, ledger and InvestSuite."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal as D

import pytest

from batch.adapters.ledger import Transfer
from batch.service.reconcile.deposits import (
    DepositFacts,
    DepositFigures,
    DepositRemote,
    add_figures,
    deposit_breaks,
    unknown_deposit_transfers,
)
from batch.service.reconcile.rules import TransactionFact

DAY = date(2026, 11, 20)
DONE = DepositFacts(
    operation_id="op-1",
    flow="DEPOSIT",
    state="COMPLETED",
    portfolio_id="P1",
    credit_reference="LT-1",
    currency="EUR",
    amount=D("1500.00"),
    ledger_account="CASH-1",
    ledger_reference="LT-9",
    value_date=DAY,
    moved=True,
    announced=True,
)


def _transfer(key: str, debit: str, credit: str, amount: str = "1500.00", reference: str = "LT-9") -> Transfer:
    return Transfer(reference, key, debit, credit, D(amount), "EUR", DAY, "payer", datetime(2026, 11, 20, tzinfo=UTC))


MOVE = _transfer("deposit:LT-1", "INCOMING-EUR", "CASH-1")
UNDO = _transfer("deposit-undo:LT-1", "CASH-1", "INCOMING-EUR", reference="LT-10")


def _settled(amount: str = "1500.00", status: str = "SETTLED", tx_status: str | None = "COMPLETED") -> TransactionFact:
    return TransactionFact("T1", tx_status, (("CASH_DEPOSIT", status, "$EUR", D(amount)),))


SETTLED = DepositRemote((_settled(),), True, True)
CANCELLED = replace(DONE, state="CANCELLED", moved=False, announced=False)
STOPPED = replace(DONE, state="NEEDS_ATTENTION", announced=False)
OTHER_AMOUNT = _transfer("deposit:LT-1", "INCOMING-EUR", "CASH-1", "1499.99")


def _types(deposit: DepositFacts, move: Transfer | None, undo: Transfer | None, remote: DepositRemote) -> list[str]:
    return [b.type.value for b in deposit_breaks(deposit, move, undo, remote)]


def test_a_completed_deposit_agrees_with_the_ledger_and_investsuite() -> None:
    """Moved once, one transaction with a SETTLED CASH_DEPOSIT (transaction status COMPLETED, as the docs show)."""
    assert _types(DONE, MOVE, None, SETTLED) == []
    assert _types(DONE, MOVE, None, DepositRemote((_settled(status="EXECUTED", tx_status=None),), True, True)) == []


@pytest.mark.parametrize(
    ("deposit", "move", "undo", "remote", "expected"),
    [
        (DONE, None, None, SETTLED, ["DEPOSIT_MOVE_MISSING"]),
        (
            replace(DONE, state="CANCELLED", moved=False, announced=False),
            MOVE,
            None,
            DepositRemote(),
            ["DEPOSIT_MOVE_NOT_IN_JOURNAL"],
        ),
        (DONE, _transfer("deposit:LT-1", "INCOMING-EUR", "CASH-2"), None, SETTLED, ["DEPOSIT_MOVE_MISMATCH"]),
        (
            DONE,
            _transfer("deposit:LT-1", "INCOMING-EUR", "CASH-1", "1499.99"),
            None,
            SETTLED,
            ["DEPOSIT_MOVE_MISMATCH"],
        ),
        (
            replace(DONE, state="NEEDS_ATTENTION", announced=False),
            MOVE,
            None,
            DepositRemote(()),
            ["DEPOSIT_NOT_ANNOUNCED"],
        ),
        (DONE, MOVE, None, DepositRemote(()), ["DEPOSIT_EVENT_MISSING"]),
        (DONE, MOVE, None, DepositRemote((_settled(), _settled())), ["DEPOSIT_DUPLICATE_TRANSACTION"]),
        (DONE, MOVE, None, DepositRemote((_settled(status="PENDING"),), True, True), ["DEPOSIT_NOT_SETTLED"]),
        (DONE, MOVE, None, DepositRemote((_settled("1000.00"),), True, True), ["DEPOSIT_NOT_SETTLED"]),
        (DONE, MOVE, None, DepositRemote((_settled(),), True, False), ["DEPOSIT_NOT_FUNDED"]),
        (DONE, MOVE, None, DepositRemote(None, False), ["DEPOSIT_PORTFOLIO_MISSING"]),
    ],
    ids=[
        "moved-not-in-ledger",
        "ledger-move-of-a-cancelled-one",
        "moved-to-another-account",
        "moved-another-amount",
        "moved-never-announced",
        "event-missing",
        "two-transactions",
        "movement-not-settled",
        "settled-another-amount",
        "not-funded",
        "portfolio-gone",
    ],
)
def test_each_disagreement_is_one_typed_break(
    deposit: DepositFacts, move: Transfer | None, undo: Transfer | None, remote: DepositRemote, expected: list[str]
) -> None:
    """One break of the right type per disagreement, naming the credit."""
    breaks = deposit_breaks(deposit, move, undo, remote)
    assert [b.type.value for b in breaks] == expected
    assert all(b.evidence["credit"] == "LT-1" and b.payout_id == "op-1" for b in breaks)


def test_a_move_undone_after_a_refusal_is_consistent_only_with_its_undo_and_no_transaction() -> None:
    """MOVE_REVERSED: the undo transfer of the same amount and no InvestSuite transaction; else a break."""
    reversed_ = replace(DONE, state="MOVE_REVERSED", announced=False)
    assert _types(reversed_, MOVE, UNDO, DepositRemote(())) == []
    assert _types(reversed_, MOVE, None, DepositRemote(())) == ["DEPOSIT_REVERSAL_MISSING"]
    assert _types(reversed_, MOVE, UNDO, DepositRemote((_settled(),))) == ["DEPOSIT_ANNOUNCED_AND_REVERSED"]


def test_an_announce_only_deposit_needs_no_ledger_move() -> None:
    """Broker integration by InvestSuite: nothing in the ledger, the transaction SETTLED: no break."""
    announce_only = replace(DONE, flow="DEPOSIT_ANNOUNCE", moved=False, ledger_reference=None)
    assert _types(announce_only, None, None, SETTLED) == []


def test_every_incoming_customer_transfer_needs_an_operation_behind_it() -> None:
    """A move needs its operation with that ledger reference; an undo an operation moved back; others are unknown."""
    stranger = _transfer("manual-fix-7", "INCOMING-EUR", "CASH-1", reference="LT-11")
    operations = {"LT-1": ("MOVE_REVERSED", "LT-9")}
    assert unknown_deposit_transfers([MOVE, UNDO], operations) == []
    found = unknown_deposit_transfers([MOVE, UNDO, stranger], {"LT-1": ("COMPLETED", "LT-8")})
    assert [(b.type.value, b.reference) for b in found] == [
        ("UNKNOWN_DEPOSIT_TRANSFER", "LT-9"),
        ("UNKNOWN_DEPOSIT_TRANSFER", "LT-10"),
        ("UNKNOWN_DEPOSIT_TRANSFER", "LT-11"),
    ]
    assert found[2].evidence["from"].startswith("****") and found[2].found == D("1500.00")


def test_figures_come_from_each_system() -> None:
    """Moved per journal and per ledger, moved back, announced, SETTLED in InvestSuite, per currency."""
    figures: dict[str, DepositFigures] = {}
    add_figures(figures, DONE, MOVE, None, SETTLED)
    add_figures(figures, replace(DONE, state="MOVE_REVERSED", announced=False), MOVE, UNDO, DepositRemote(()))
    f = figures["EUR"]
    assert (f.operations, f.moved_journal, f.moved_ledger, f.moved_back_ledger) == (2, D(3000), D(3000), D(1500))
    assert (f.announced_journal, f.settled_investsuite) == (D(1500), D(1500))
    assert f.to_dict("EUR")["moved_back_ledger"] == "1500.00"
