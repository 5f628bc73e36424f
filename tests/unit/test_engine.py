"""The step engine on in-memory fakes: every step boundary of the withdrawal flow crashed, done exactly once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from batch.domain.flow import Flow
from batch.domain.payout import FLOW_STEPS, FlowKind, PayoutState
from batch.domain.policy import Policy
from batch.domain.ports import Ports
from batch.domain.records import PayoutRecord
from batch.domain.withdrawal import withdrawal_flow
from batch.errors import RemotePermanentError, RemoteTransientError
from batch.sandbox.seed import portfolio_document
from batch.sandbox.store import new_id
from batch.service.engine.steps import Engine
from tests.factories import planned_payout
from tests.fakes import Boundaries, Crash, FakeInvestSuite, FakeJournal, FakeLedger

TODAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 1, 30, tzinfo=UTC)
#: the journal's boundaries around each step: intent committed, outcome about to commit, outcome committed
MOMENTS = ("intent", "before_outcome", "outcome")
WITHDRAWAL_POINTS = [
    *(f"{step.value}.{moment}" for step, _ in FLOW_STEPS[FlowKind.WITHDRAWAL] for moment in MOMENTS),
    "ledger.applied",
    "create_transaction.applied",
    "patch_portfolio.applied",
    "post_event.applied",
]


@dataclass
class World:
    """The fakes, sharing one crash point, and the flows the engine drives."""

    boundaries: Boundaries
    journal: FakeJournal
    investsuite: FakeInvestSuite
    ledger: FakeLedger
    flows: dict[FlowKind, Flow]

    @classmethod
    def make(cls, point: str | None = None, times: int = 1) -> World:
        boundaries = Boundaries(point, times)
        flows = {FlowKind.WITHDRAWAL: withdrawal_flow(Policy())}
        return cls(boundaries, FakeJournal(boundaries), FakeInvestSuite(boundaries), FakeLedger(boundaries), flows)

    def engine(self, run_id: uuid.UUID | None = None, max_step_attempts: int = 4) -> Engine:
        ports = Ports(investsuite=self.investsuite, ledger=self.ledger, clock=lambda: NOW)
        return Engine(
            journal=self.journal,
            ports=ports,
            flows=self.flows,
            run_id=run_id or uuid.uuid4(),
            actor="test",
            worker=f"worker-{uuid.uuid4().hex[:6]}",
            concurrency=2,
            max_step_attempts=max_step_attempts,
        )

    def run_until_settled(self, runs: int = 30) -> int:
        """Run engines (a new one after each crash, as a restarted process) until nothing is executable."""
        crashes = 0
        for _ in range(runs):
            try:
                self.engine().execute()
            except Crash:
                crashes += 1
                self.journal.release_all()  # the next run marks the dead one ABANDONED and frees its leases
                continue
            if not self.journal.executable_left():
                return crashes
        return crashes

    def withdrawal(self, *, cash: str = "1000.00", divest: str = "500.00", ledger: str = "1000.00") -> PayoutRecord:
        pid, uid = new_id("P"), new_id("U")
        doc = portfolio_document(pid, uid, 1, cash=Decimal(cash), divest_amount=Decimal(divest))
        doc["portfolio"]["IE00BK5BQT80"] = "12.5"  # a quantity served as a string
        self.investsuite.portfolios[pid] = doc
        account = f"CASH-{pid[-6:]}"
        self.ledger.balances[account] = Decimal(ledger)
        payout = planned_payout(
            pid,
            business_date=TODAY,
            at=NOW,
            amount=Decimal(divest),
            cash=Decimal(cash),
            divest=divest,
            ledger_account=account,
        )
        self.journal.add(payout)
        return payout


def _paid_exactly_once(world: World, payout: PayoutRecord) -> None:
    final = world.journal.operations[payout.id]
    assert final.state is PayoutState.COMPLETED, (final.state, final.last_error)
    transfers = [t for t in world.ledger.transfers.values() if t.debit == payout.ledger_account]
    assert [t.amount for t in transfers] == [payout.amount]
    assert len([t for t in world.investsuite.transactions if t["portfolio_id"] == payout.portfolio_id]) == 1
    doc = world.investsuite.portfolios[payout.portfolio_id]
    assert Decimal(doc["portfolio"]["$EUR"]) == payout.cash_snapshot - payout.amount
    assert doc["config"]["manager_settings"]["divest_amount"] == 0
    assert doc["portfolio"]["IE00BK5BQT80"] == Decimal("12.5")  # written back as a number
    assert list(world.investsuite.events) == [str(payout.id)]


def test_a_withdrawal_completes_in_four_steps_with_one_effect_each() -> None:
    """No crash: the four steps run once each; ledger, transaction, PATCH and event happen exactly once."""
    world = World.make()
    payout = world.withdrawal()
    world.engine().execute()
    _paid_exactly_once(world, payout)
    assert dict(world.investsuite.applied) == {"transaction": 1, "patch": 1, "event.withdraw": 1}


@pytest.mark.parametrize("point", WITHDRAWAL_POINTS)
def test_a_crash_at_any_boundary_of_the_withdrawal_still_pays_exactly_once(point: str) -> None:
    """Killed at this boundary, a restarted engine reads back and finishes: every effect happened once."""
    world = World.make(point)
    payout = world.withdrawal()
    assert world.run_until_settled() == 1
    assert point in world.boundaries.seen
    _paid_exactly_once(world, payout)
    assert world.investsuite.applied["patch"] == 1  # a PATCH whose answer was lost is adopted, not resent


@pytest.mark.parametrize("point", ["RECORD_TRANSACTION.intent", "UPDATE_PORTFOLIO.intent", "LEDGER_POST.intent"])
def test_twenty_crashes_in_the_same_step_never_exhaust_its_attempts(point: str) -> None:
    """Intents cut off by crashes are not failures: after 20 kills in one step the payout still completes."""
    world = World.make(point, times=20)
    payout = world.withdrawal()
    assert world.run_until_settled(runs=25) == 20
    _paid_exactly_once(world, payout)


def test_a_step_failing_only_transiently_is_stalled_for_the_next_run_not_parked() -> None:
    """Five 503s on every try: the payout keeps its state (stalled), and the next run completes it."""
    world = World.make()
    payout = world.withdrawal()

    class Always503(dict[str, Any]):
        def pop(self, key: str, default: Any = None) -> Any:
            return RemoteTransientError("HTTP 503", status=503) if key == "create_transaction" else default

    world.investsuite.fail_next = Always503()
    first_run = uuid.uuid4()
    world.engine(first_run).execute()
    stalled = world.journal.operations[payout.id]
    assert stalled.state is PayoutState.LEDGER_POSTED and world.journal.stalled[payout.id] == first_run
    world.engine(first_run).execute()  # the same run does not pick it up again
    assert world.journal.operations[payout.id].state is PayoutState.LEDGER_POSTED

    world.investsuite.fail_next = {}
    world.engine().execute()  # the next run resumes it
    _paid_exactly_once(world, payout)


def test_a_refused_patch_stops_for_a_person_and_the_money_stays_paid() -> None:
    """A 422 on the PATCH is permanent: NEEDS_ATTENTION at UPDATE_PORTFOLIO, the ledger payout stands."""
    world = World.make()
    payout = world.withdrawal()
    world.investsuite.fail_next["patch_portfolio"] = RemotePermanentError("HTTP 422", status=422)
    world.engine().execute()
    stopped = world.journal.operations[payout.id]
    assert (stopped.state, stopped.failing_step) == (PayoutState.NEEDS_ATTENTION, "UPDATE_PORTFOLIO")
    assert stopped.stopped_in_state == "TRANSACTION_RECORDED" and len(world.ledger.transfers) == 1


@pytest.mark.parametrize(
    ("divest", "revised"),
    [(Decimal(0), ("SKIP", "CHANGED_SINCE_PLANNING")), (Decimal("200.00"), ("DEFER", "CHANGED_SINCE_PLANNING"))],
    ids=["cancelled", "lowered"],
)
def test_a_divest_changed_before_the_ledger_post_cancels_with_no_effect(
    divest: Decimal, revised: tuple[str, str]
) -> None:
    """The fresh read before money moves sees the change: CANCELLED, the decision revised, nothing written."""
    world = World.make()
    payout = world.withdrawal()
    doc = world.investsuite.portfolios[payout.portfolio_id]
    doc["config"]["manager_settings"]["divest_amount"] = divest
    world.engine().execute()
    assert world.journal.operations[payout.id].state is PayoutState.CANCELLED
    assert world.journal.revised[payout.id] == revised
    assert not world.ledger.transfers and not world.investsuite.applied


def test_invalid_remote_data_holds_the_payout_before_any_money_moves() -> None:
    """A cash figure that cannot be written back (3 decimals in EUR): HOLD INVALID_REMOTE_DATA, no transfer."""
    world = World.make()
    payout = world.withdrawal()
    world.investsuite.portfolios[payout.portfolio_id]["portfolio"]["$EUR"] = Decimal("1000.005")
    world.engine().execute()
    assert world.journal.operations[payout.id].state is PayoutState.CANCELLED
    assert world.journal.revised[payout.id] == ("HOLD", "INVALID_REMOTE_DATA")
    assert not world.ledger.transfers


def test_a_raise_before_the_patch_keeps_the_unpaid_rest_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """Divest raised 500 -> 800 while the payout is in flight: 500 paid, 300 left for later."""
    world = World.make()
    payout = world.withdrawal(cash="2000.00")
    original = world.investsuite.create_transaction

    def raise_then_record(portfolio_id: str, body: dict[str, Any]) -> Any:
        world.investsuite.portfolios[portfolio_id]["config"]["manager_settings"]["divest_amount"] = Decimal(800)
        return original(portfolio_id, body)

    monkeypatch.setattr(world.investsuite, "create_transaction", raise_then_record)
    world.engine().execute()
    doc = world.investsuite.portfolios[payout.portfolio_id]
    assert doc["config"]["manager_settings"]["divest_amount"] == Decimal("300.00")
    assert Decimal(doc["portfolio"]["$EUR"]) == Decimal("1500.00")
    assert replace(world.journal.operations[payout.id]).state is PayoutState.COMPLETED
