"""The payout state machine: the transition table, the step that moves each state on, the forward path."""

from __future__ import annotations

import itertools

import pytest

from batch.domain.payout import (
    EXECUTABLE,
    EXECUTABLE_STATES,
    FLOW_BRANCHES,
    FLOW_STATES,
    NEXT_STEP,
    OPEN_STATES,
    PAST_LEDGER,
    TRANSITIONS,
    FlowKind,
    PayoutState,
    Step,
    check_transition,
    divert_target,
    next_step,
    path,
)
from batch.errors import DomainError, InvalidTransitionError

S = PayoutState
FLOW = [
    S.PLANNED,
    S.LEDGER_POSTED,
    S.TRANSACTION_RECORDED,
    S.DIVEST_CLEARED,
    S.HOLDINGS_UPDATED,
    S.EVENT_SENT,
    S.COMPLETED,
]

ALLOWED = [
    (S.HELD, S.PLANNED),  # approved
    (S.HELD, S.CANCELLED),  # rejected before any money moved
    (S.PLANNED, S.LEDGER_POSTED),
    (S.PLANNED, S.CANCELLED),
    (S.PLANNED, S.NEEDS_ATTENTION),
    (S.LEDGER_POSTED, S.TRANSACTION_RECORDED),
    (S.LEDGER_POSTED, S.NEEDS_ATTENTION),
    (S.TRANSACTION_RECORDED, S.DIVEST_CLEARED),
    (S.TRANSACTION_RECORDED, S.NEEDS_ATTENTION),
    (S.DIVEST_CLEARED, S.HOLDINGS_UPDATED),
    (S.DIVEST_CLEARED, S.NEEDS_ATTENTION),
    (S.HOLDINGS_UPDATED, S.EVENT_SENT),
    (S.HOLDINGS_UPDATED, S.NEEDS_ATTENTION),
    (S.EVENT_SENT, S.COMPLETED),
    (S.EVENT_SENT, S.NEEDS_ATTENTION),
    # an operator's retry puts the payout back in the state it stopped in
    (S.NEEDS_ATTENTION, S.PLANNED),
    (S.NEEDS_ATTENTION, S.LEDGER_POSTED),
    (S.NEEDS_ATTENTION, S.TRANSACTION_RECORDED),
    (S.NEEDS_ATTENTION, S.DIVEST_CLEARED),
    (S.NEEDS_ATTENTION, S.HOLDINGS_UPDATED),
    (S.NEEDS_ATTENTION, S.EVENT_SENT),
    # Allowed by the table; only legal when the payout stopped before the ledger post. The table alone
    # cannot tell, so that guard belongs to whoever cancels (journal/service).
    (S.NEEDS_ATTENTION, S.CANCELLED),
    # the deposit flows: a ledger move, then the announcement (or the announcement alone)
    (S.PLANNED, S.LEDGER_MOVED),
    (S.LEDGER_MOVED, S.EVENT_SENT),
    (S.LEDGER_MOVED, S.NEEDS_ATTENTION),
    (S.NEEDS_ATTENTION, S.LEDGER_MOVED),
    (S.PLANNED, S.EVENT_SENT),
    # the deposit's compensation: announcement refused after the move, the move undone
    (S.LEDGER_MOVED, S.ANNOUNCE_REFUSED),
    (S.ANNOUNCE_REFUSED, S.MOVE_REVERSED),
    (S.ANNOUNCE_REFUSED, S.NEEDS_ATTENTION),
    (S.NEEDS_ATTENTION, S.ANNOUNCE_REFUSED),
]

FORBIDDEN = [
    pytest.param(S.LEDGER_POSTED, S.CANCELLED, id="ledger-posted-never-cancelled"),
    pytest.param(S.TRANSACTION_RECORDED, S.CANCELLED, id="transaction-recorded-never-cancelled"),
    pytest.param(S.EVENT_SENT, S.CANCELLED, id="event-sent-never-cancelled"),
    pytest.param(S.LEDGER_POSTED, S.PLANNED, id="no-rollback-of-ledger-post"),
    pytest.param(S.PLANNED, S.COMPLETED, id="no-skipping-to-completed"),
    pytest.param(S.PLANNED, S.TRANSACTION_RECORDED, id="no-skipping-the-ledger"),
    pytest.param(S.HELD, S.LEDGER_POSTED, id="held-needs-approval-first"),
    pytest.param(S.COMPLETED, S.NEEDS_ATTENTION, id="completed-is-terminal"),
    pytest.param(S.COMPLETED, S.PLANNED, id="completed-not-replanned"),
    pytest.param(S.CANCELLED, S.PLANNED, id="cancelled-is-terminal"),
    pytest.param(S.NEEDS_ATTENTION, S.COMPLETED, id="attention-cannot-jump-to-completed"),
    pytest.param(S.PLANNED, S.PLANNED, id="no-self-transition"),
]


@pytest.mark.parametrize(("current", "target"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_transition(current: PayoutState, target: PayoutState) -> None:
    """Every transition the design allows passes check_transition."""
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), FORBIDDEN)
def test_forbidden_transition(current: PayoutState, target: PayoutState) -> None:
    """A transition the design forbids raises InvalidTransitionError naming both states."""
    with pytest.raises(InvalidTransitionError, match=f"{current}.*{target}"):
        check_transition(current, target)


def test_transition_table_is_exactly_the_allowed_list() -> None:
    """Every pair of states not listed as allowed is refused: the table has no extra edges."""
    allowed = set(ALLOWED)
    for current, target in itertools.product(PayoutState, repeat=2):
        if (current, target) in allowed:
            check_transition(current, target)
        else:
            with pytest.raises(InvalidTransitionError):
                check_transition(current, target)


def test_every_state_has_a_row() -> None:
    """The transition table covers every state, so check_transition never fails with a KeyError."""
    assert set(TRANSITIONS) == set(PayoutState)


def test_nothing_past_the_ledger_is_cancelled() -> None:
    """No state in which money has left the ledger account can reach CANCELLED."""
    assert frozenset(FLOW[1:]) == PAST_LEDGER
    for state in PAST_LEDGER:
        assert S.CANCELLED not in TRANSITIONS[state]


@pytest.mark.parametrize("state", [S.COMPLETED, S.CANCELLED, S.MOVE_REVERSED])
def test_terminal_states(state: PayoutState) -> None:
    """COMPLETED, CANCELLED and MOVE_REVERSED are terminal: no way out, not open, not executable."""
    assert TRANSITIONS[state] == frozenset()
    assert state not in OPEN_STATES
    assert state not in EXECUTABLE_STATES


def test_open_and_executable_states() -> None:
    """HELD and NEEDS_ATTENTION are open but wait for a human; the flow states before COMPLETED execute."""
    assert frozenset(PayoutState) - {S.COMPLETED, S.CANCELLED, S.MOVE_REVERSED} == OPEN_STATES
    assert frozenset(FLOW[:-1]) == EXECUTABLE[FlowKind.WITHDRAWAL]
    # the deposit's ledger move, and the undo of a move whose announcement was refused
    assert frozenset(FLOW[:-1]) | {S.LEDGER_MOVED, S.ANNOUNCE_REFUSED} == EXECUTABLE_STATES
    assert S.HELD not in EXECUTABLE_STATES
    assert S.NEEDS_ATTENTION not in EXECUTABLE_STATES
    assert EXECUTABLE_STATES <= OPEN_STATES


@pytest.mark.parametrize("state", sorted(EXECUTABLE[FlowKind.WITHDRAWAL]))
def test_next_step_lands_on_a_reachable_state(state: PayoutState) -> None:
    """Each executable state's next step lands on a later flow state reachable by allowed transitions."""
    step, landing = NEXT_STEP[state]
    assert isinstance(step, Step)
    assert landing in FLOW
    assert FLOW.index(landing) > FLOW.index(state)
    for before, after in itertools.pairwise([state, *path(state, landing)]):
        check_transition(before, after)


def test_next_steps_in_flow_order() -> None:
    """The steps run ledger first, then the InvestSuite transaction, the portfolio PATCH and the event."""
    assert [NEXT_STEP[s][0] for s in FLOW[:-1]] == [
        Step.LEDGER_POST,
        Step.RECORD_TRANSACTION,
        Step.UPDATE_PORTFOLIO,
        Step.UPDATE_PORTFOLIO,
        Step.SEND_EVENT,
        Step.SEND_EVENT,
    ]


def test_driving_next_steps_from_planned_reaches_completed() -> None:
    """Following NEXT_STEP from PLANNED ends at COMPLETED after the four external steps."""
    state, steps = S.PLANNED, []
    while state in NEXT_STEP:
        step, state = NEXT_STEP[state]
        steps.append(step)
    assert state is S.COMPLETED
    assert steps == [Step.LEDGER_POST, Step.RECORD_TRANSACTION, Step.UPDATE_PORTFOLIO, Step.SEND_EVENT]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(S.PLANNED, S.LEDGER_POSTED, [S.LEDGER_POSTED], id="one-step"),
        pytest.param(
            S.TRANSACTION_RECORDED, S.HOLDINGS_UPDATED, [S.DIVEST_CLEARED, S.HOLDINGS_UPDATED], id="portfolio-patch"
        ),
        pytest.param(S.HOLDINGS_UPDATED, S.COMPLETED, [S.EVENT_SENT, S.COMPLETED], id="event"),
        pytest.param(S.PLANNED, S.COMPLETED, FLOW[1:], id="whole-flow"),
    ],
)
def test_path_order(start: PayoutState, end: PayoutState, expected: list[PayoutState]) -> None:
    """path() lists the states passed through, in flow order, excluding the start and including the end."""
    assert path(start, end) == expected


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(S.LEDGER_POSTED, S.LEDGER_POSTED, id="same-state"),
        pytest.param(S.COMPLETED, S.PLANNED, id="backwards"),
    ],
)
def test_path_refuses_non_forward(start: PayoutState, end: PayoutState) -> None:
    """path() raises InvalidTransitionError unless the end is strictly after the start."""
    with pytest.raises(InvalidTransitionError):
        path(start, end)


def test_invalid_transition_is_a_domain_error() -> None:
    """InvalidTransitionError sits under DomainError in the one error tree."""
    assert issubclass(InvalidTransitionError, DomainError)


@pytest.mark.parametrize(
    ("flow", "current", "target"),
    [
        (FlowKind.WITHDRAWAL, S.PLANNED, S.EVENT_SENT),
        (FlowKind.WITHDRAWAL, S.PLANNED, S.LEDGER_MOVED),
        (FlowKind.DEPOSIT, S.PLANNED, S.LEDGER_POSTED),
        (FlowKind.DEPOSIT, S.PLANNED, S.EVENT_SENT),
        (FlowKind.DEPOSIT_ANNOUNCE, S.PLANNED, S.LEDGER_MOVED),
    ],
    ids=[
        "withdrawal skips its ledger post",
        "withdrawal moves",
        "deposit posts",
        "deposit skips its move",
        "announce moves",
    ],
)
def test_a_flow_refuses_the_transitions_of_another(flow: FlowKind, current: PayoutState, target: PayoutState) -> None:
    """Each flow allows only its own path: what another flow does is refused for it."""
    with pytest.raises(InvalidTransitionError):
        check_transition(current, target, flow)


def test_every_flow_has_one_step_out_of_each_state_before_its_end() -> None:
    """Derived from the flows as data: each state but the last has exactly one step that moves it on."""
    for flow, states in FLOW_STATES.items():
        branches = {diverted for _, diverted, _, _ in FLOW_BRANCHES.get(flow, ())}
        assert set(EXECUTABLE[flow]) == set(states[:-1]) | branches
        for state in states[:-1]:
            move = next_step(flow, state)
            assert move is not None and move[1][-1] in states
        assert next_step(flow, states[-1]) is None


def test_the_deposit_compensation_is_a_branch_out_of_the_ledger_move() -> None:
    """A refused announcement after the move diverts to ANNOUNCE_REFUSED, whose one step ends MOVE_REVERSED."""
    assert divert_target(FlowKind.DEPOSIT, S.LEDGER_MOVED) is S.ANNOUNCE_REFUSED
    assert divert_target(FlowKind.DEPOSIT, S.PLANNED) is None
    assert divert_target(FlowKind.WITHDRAWAL, S.LEDGER_POSTED) is None
    assert next_step(FlowKind.DEPOSIT, S.ANNOUNCE_REFUSED) == (Step.REVERSE_LEDGER_MOVE, (S.MOVE_REVERSED,))
    assert next_step(FlowKind.DEPOSIT, S.MOVE_REVERSED) is None
    with pytest.raises(InvalidTransitionError):
        check_transition(S.LEDGER_POSTED, S.ANNOUNCE_REFUSED, FlowKind.WITHDRAWAL)
    with pytest.raises(InvalidTransitionError):
        check_transition(S.MOVE_REVERSED, S.PLANNED, FlowKind.DEPOSIT)
