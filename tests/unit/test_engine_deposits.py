"""The engine's deposit flows on in-memory fakes: a crash at every boundary, each credit moved and announced once."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from batch.domain.deposit import deposit_flows, move_key, undo_key
from batch.domain.payout import FLOW_STEPS, FlowKind, PayoutState
from batch.domain.records import PayoutRecord
from tests.unit.test_engine import MOMENTS, World

DEPOSIT_POINTS = [
    *(f"{step.value}.{moment}" for step, _ in FLOW_STEPS[FlowKind.DEPOSIT] for moment in MOMENTS),
    "ledger.applied",
    "post_event.applied",
]


def _deposit(world: World, flow: FlowKind, amount: str = "1500.00", status: str = "ACTIVE") -> PayoutRecord:
    template = world.withdrawal(cash="200.00", divest="0")  # a portfolio (with cash 200) and its ledger account
    del world.journal.operations[template.id]
    world.investsuite.portfolios[template.portfolio_id]["status"] = status
    world.investsuite.portfolios[template.portfolio_id]["config"]["manager_settings"]["divest_amount"] = None
    world.ledger.balances["INCOMING-EUR"] += Decimal(amount)
    deposit = replace(
        template,
        id=uuid.uuid4(),
        flow=flow,
        amount=Decimal(amount),
        counter_account=None,
        divest_snapshot=None,
        credit_reference=f"LT-CREDIT-{uuid.uuid4().hex[:8]}",
    )
    world.journal.add(deposit)
    return deposit


def _deposited_once(world: World, deposit: PayoutRecord, moved: bool) -> None:
    final = world.journal.operations[deposit.id]
    assert final.state is PayoutState.COMPLETED, (final.state, final.last_error)
    assert deposit.credit_reference is not None
    moves = [t for t in world.ledger.transfers.values() if t.idempotency_key == move_key(deposit.credit_reference)]
    assert [(t.debit, t.credit, t.amount) for t in moves] == (
        [("INCOMING-EUR", deposit.ledger_account, deposit.amount)] if moved else []
    )
    assert list(world.investsuite.events) == [deposit.credit_reference]
    doc = world.investsuite.portfolios[deposit.portfolio_id]
    assert Decimal(str(doc["portfolio"]["$EUR"])) == Decimal("200.00") + deposit.amount
    assert doc["funded_since"] is not None


def _world(point: str | None = None, times: int = 1) -> World:
    world = World.make(point, times)
    world.flows.update(deposit_flows())
    return world


@pytest.mark.parametrize("point", DEPOSIT_POINTS)
def test_a_crash_at_any_boundary_of_a_client_side_deposit_still_moves_and_announces_once(point: str) -> None:
    """Killed at this boundary of LEDGER_MOVE or SEND_DEPOSIT_EVENT, a restarted engine finishes: once each."""
    world = _world(point)
    deposit = _deposit(world, FlowKind.DEPOSIT)
    assert world.run_until_settled() == 1
    _deposited_once(world, deposit, moved=True)


@pytest.mark.parametrize("point", [f"SEND_DEPOSIT_EVENT.{moment}" for moment in MOMENTS] + ["post_event.applied"])
def test_a_crash_at_any_boundary_of_an_announce_only_deposit_still_announces_once(point: str) -> None:
    """Broker integration by InvestSuite: no ledger move; a crash anywhere still announces the credit once."""
    world = _world(point)
    deposit = _deposit(world, FlowKind.DEPOSIT_ANNOUNCE)
    assert world.run_until_settled() == 1
    _deposited_once(world, deposit, moved=False)


def test_a_portfolio_archived_before_the_move_holds_the_money_in_the_incoming_account() -> None:
    """The fresh read before the first effect sees an archived portfolio: CANCELLED, HOLD ARCHIVED, nothing moved."""
    world = _world()
    deposit = _deposit(world, FlowKind.DEPOSIT)
    world.investsuite.portfolios[deposit.portfolio_id]["archived"] = True
    world.engine().execute()
    assert world.journal.operations[deposit.id].state is PayoutState.CANCELLED
    assert world.journal.revised[deposit.id] == ("HOLD", "ARCHIVED")
    assert not world.ledger.transfers and not world.investsuite.events


def test_withdrawals_and_deposits_share_one_engine_run() -> None:
    """One engine drives both flows' operations in the same run, each exactly once."""
    world = _world("LEDGER_MOVE.intent")
    deposit = _deposit(world, FlowKind.DEPOSIT)
    payout = world.withdrawal()
    world.run_until_settled()
    assert world.journal.operations[deposit.id].state is PayoutState.COMPLETED
    assert world.journal.operations[payout.id].state is PayoutState.COMPLETED
    assert sorted(world.investsuite.events) == sorted([str(payout.id), str(deposit.credit_reference)])


REFUSAL_POINTS = [
    *(f"{step}.{moment}" for step in ("SEND_DEPOSIT_EVENT", "REVERSE_LEDGER_MOVE") for moment in MOMENTS),
    "ledger.applied",
]


#: crash points that leave an earlier SEND_DEPOSIT_EVENT attempt whose outcome is unknown to the next run
UNCERTAIN_ANNOUNCEMENT = frozenset({"SEND_DEPOSIT_EVENT.intent", "SEND_DEPOSIT_EVENT.before_outcome"})


def _archived_right_after_the_move(world: World, deposit: PayoutRecord) -> None:
    """The customer's portfolio is archived between LEDGER_MOVE and the announcement (a slow run)."""
    move = world.ledger.move_deposit

    def move_then_archive(**kwargs: Any) -> Any:
        world.investsuite.portfolios[deposit.portfolio_id]["archived"] = True  # after the fresh read before it
        return move(**kwargs)

    world.ledger.move_deposit = move_then_archive  # type: ignore[method-assign]


@pytest.mark.parametrize("point", [None, *REFUSAL_POINTS])
def test_an_announcement_refused_after_the_move_undoes_the_move_once(point: str | None) -> None:
    """Archived after the move: the 409 undoes the move once (HOLD ARCHIVED), unless an earlier try may have landed."""
    world = _world(point)
    deposit = _deposit(world, FlowKind.DEPOSIT)
    customer_before = world.ledger.balances[deposit.ledger_account]
    _archived_right_after_the_move(world, deposit)
    world.run_until_settled()
    final = world.journal.operations[deposit.id]
    if point in UNCERTAIN_ANNOUNCEMENT:
        # cut off around an earlier announcement: it may have landed, so the refusal never moves money back
        assert final.state is PayoutState.NEEDS_ATTENTION, (final.state, final.last_error)
        assert final.last_error is not None and "may have been applied" in final.last_error
        assert deposit.credit_reference is not None
        assert [t.idempotency_key for t in world.ledger.transfers.values()] == [move_key(deposit.credit_reference)]
        assert world.ledger.balances[deposit.ledger_account] == customer_before + deposit.amount
        assert not world.investsuite.events
        return
    assert final.state is PayoutState.MOVE_REVERSED, (final.state, final.last_error)
    assert world.journal.revised[deposit.id] == ("HOLD", "ARCHIVED")
    assert deposit.credit_reference is not None
    keys = sorted(t.idempotency_key for t in world.ledger.transfers.values())
    assert keys == sorted([move_key(deposit.credit_reference), undo_key(deposit.credit_reference)])
    undone = world.ledger.transfers[undo_key(deposit.credit_reference)]
    assert (undone.debit, undone.credit, undone.amount) == (deposit.ledger_account, "INCOMING-EUR", deposit.amount)
    assert world.ledger.balances["INCOMING-EUR"] == deposit.amount
    assert world.ledger.balances[deposit.ledger_account] == customer_before
    assert not world.investsuite.events
    assert Decimal(str(world.investsuite.portfolios[deposit.portfolio_id]["portfolio"]["$EUR"])) == Decimal("200.00")


def test_the_attention_policy_leaves_the_money_moved_with_the_true_reason() -> None:
    """refused_after_move = attention: NEEDS_ATTENTION at the event naming the archive; nothing undone."""
    world = _world()
    world.flows.update(deposit_flows(reverse_refused=False))
    deposit = _deposit(world, FlowKind.DEPOSIT)
    _archived_right_after_the_move(world, deposit)
    world.engine().execute()
    final = world.journal.operations[deposit.id]
    assert (final.state, final.failing_step) == (PayoutState.NEEDS_ATTENTION, "SEND_DEPOSIT_EVENT")
    assert final.last_error is not None and "archived" in final.last_error and "ARCHIVED" in final.last_error
    assert len(world.ledger.transfers) == 1 and not world.investsuite.events


def test_a_reused_event_key_is_never_undone() -> None:
    """A 409 naming the Idempotency-Key means the key was applied with another body: attention, money stays."""
    world = _world()
    deposit = _deposit(world, FlowKind.DEPOSIT)
    assert deposit.credit_reference is not None
    world.investsuite.events[deposit.credit_reference] = ("another body", {})
    world.engine().execute()
    final = world.journal.operations[deposit.id]
    assert final.state is PayoutState.NEEDS_ATTENTION
    assert final.last_error == "deposit event key reused with a different body"
    assert list(world.ledger.transfers) == [move_key(deposit.credit_reference)]


def test_an_announce_only_deposit_refused_is_held_with_the_reason() -> None:
    """Broker integration by InvestSuite: nothing moved, so a refused event cancels and holds (deleted)."""
    world = _world()
    deposit = _deposit(world, FlowKind.DEPOSIT_ANNOUNCE)
    post = world.investsuite.post_event

    def delete_then_post(kind: Any, **kwargs: Any) -> Any:
        world.investsuite.portfolios[deposit.portfolio_id]["deleted"] = True
        return post(kind, **kwargs)

    world.investsuite.post_event = delete_then_post  # type: ignore[method-assign]
    world.engine().execute()
    assert world.journal.operations[deposit.id].state is PayoutState.CANCELLED
    assert world.journal.revised[deposit.id] == ("HOLD", "DELETED")
    assert not world.ledger.transfers and not world.investsuite.events


def test_an_undo_the_ledger_refuses_stops_for_a_person_in_the_refused_state() -> None:
    """The customer account no longer holds the money: NEEDS_ATTENTION at REVERSE_LEDGER_MOVE, nothing undone."""
    world = _world()
    deposit = _deposit(world, FlowKind.DEPOSIT)
    _archived_right_after_the_move(world, deposit)
    reverse = world.ledger.reverse_deposit

    def spent_then_reverse(**kwargs: Any) -> Any:
        world.ledger.balances[deposit.ledger_account] = Decimal(0)  # the customer spent it meanwhile
        return reverse(**kwargs)

    world.ledger.reverse_deposit = spent_then_reverse  # type: ignore[method-assign]
    world.engine().execute()
    final = world.journal.operations[deposit.id]
    assert (final.state, final.failing_step) == (PayoutState.NEEDS_ATTENTION, "REVERSE_LEDGER_MOVE")
    assert final.stopped_in_state == PayoutState.ANNOUNCE_REFUSED.value
    assert deposit.credit_reference is not None
    assert list(world.ledger.transfers) == [move_key(deposit.credit_reference)] and not world.investsuite.events
