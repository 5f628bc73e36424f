"""The operations' state machine: one state vocabulary, each flow's states and steps declared once.

Every other table — which step moves a state on, which states a claim takes, which transitions are
allowed, which timestamp column a state stamps — is derived here from ``FLOWS``. The same transitions
are guarded in SQL (``UPDATE ... WHERE state = :expected``) by the journal, so a concurrent writer loses
loudly instead of silently.

    WITHDRAWAL        PLANNED -LEDGER_POST-> LEDGER_POSTED -RECORD_TRANSACTION-> TRANSACTION_RECORDED
                      -UPDATE_PORTFOLIO-> (DIVEST_CLEARED) HOLDINGS_UPDATED -SEND_EVENT-> (EVENT_SENT) COMPLETED
    DEPOSIT           PLANNED -LEDGER_MOVE-> LEDGER_MOVED -SEND_DEPOSIT_EVENT-> (EVENT_SENT) COMPLETED
    DEPOSIT_ANNOUNCE  PLANNED -SEND_DEPOSIT_EVENT-> (EVENT_SENT) COMPLETED
    WITHDRAWAL_ANNOUNCE  PLANNED -SEND_EVENT-> (EVENT_SENT) COMPLETED

    DEPOSIT, compensation (``FLOW_BRANCHES``): the announcement refused for good after the move (portfolio
                      archived, deleted, ...) LEDGER_MOVED -SEND_DEPOSIT_EVENT refused-> ANNOUNCE_REFUSED
                      -REVERSE_LEDGER_MOVE-> MOVE_REVERSED (the money is back in the incoming account; the
                      credit is held with the true reason)

    HELD --approve--> PLANNED; PLANNED/HELD --cancel--> CANCELLED (never once money moved)
    any open state --> NEEDS_ATTENTION --retry--> the state it stopped in

A step takes an operation from any state after the previous step's target up to its own target (the
states in brackets are passed through in one step: divest and holdings go in one PATCH, the event's
answer completes the operation).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from batch.errors import InvalidTransitionError


class PayoutState(StrEnum):
    PLANNED = "PLANNED"
    HELD = "HELD"
    LEDGER_POSTED = "LEDGER_POSTED"
    LEDGER_MOVED = "LEDGER_MOVED"
    TRANSACTION_RECORDED = "TRANSACTION_RECORDED"
    DIVEST_CLEARED = "DIVEST_CLEARED"
    HOLDINGS_UPDATED = "HOLDINGS_UPDATED"
    EVENT_SENT = "EVENT_SENT"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    ANNOUNCE_REFUSED = "ANNOUNCE_REFUSED"  # moved, then InvestSuite refused the deposit event for good
    MOVE_REVERSED = "MOVE_REVERSED"  # ... and the move was undone (terminal: the credit is held)


class Step(StrEnum):
    LEDGER_POST = "LEDGER_POST"
    RECORD_TRANSACTION = "RECORD_TRANSACTION"
    UPDATE_PORTFOLIO = "UPDATE_PORTFOLIO"
    SEND_EVENT = "SEND_EVENT"
    LEDGER_MOVE = "LEDGER_MOVE"
    SEND_DEPOSIT_EVENT = "SEND_DEPOSIT_EVENT"
    REVERSE_LEDGER_MOVE = "REVERSE_LEDGER_MOVE"  # customer account -> incoming account, keyed by the move


class FlowKind(StrEnum):
    WITHDRAWAL = "WITHDRAWAL"  # a customer's withdrawal paid out of the ledger (batch or bus triggered)
    DEPOSIT = "DEPOSIT"  # broker integration by the client: move the money in the ledger, then announce it
    DEPOSIT_ANNOUNCE = "DEPOSIT_ANNOUNCE"  # broker integration by InvestSuite: only announce it
    # broker integration by InvestSuite: the core banking system paid the customer; only announce the payout
    WITHDRAWAL_ANNOUNCE = "WITHDRAWAL_ANNOUNCE"


S = PayoutState

#: each flow's states in order, and its steps with the state each one reaches
FLOW_STATES: dict[FlowKind, tuple[PayoutState, ...]] = {
    FlowKind.WITHDRAWAL: (
        S.PLANNED,
        S.LEDGER_POSTED,
        S.TRANSACTION_RECORDED,
        S.DIVEST_CLEARED,
        S.HOLDINGS_UPDATED,
        S.EVENT_SENT,
        S.COMPLETED,
    ),
    FlowKind.DEPOSIT: (S.PLANNED, S.LEDGER_MOVED, S.EVENT_SENT, S.COMPLETED),
    FlowKind.DEPOSIT_ANNOUNCE: (S.PLANNED, S.EVENT_SENT, S.COMPLETED),
    FlowKind.WITHDRAWAL_ANNOUNCE: (S.PLANNED, S.EVENT_SENT, S.COMPLETED),
}
FLOW_STEPS: dict[FlowKind, tuple[tuple[Step, PayoutState], ...]] = {
    FlowKind.WITHDRAWAL: (
        (Step.LEDGER_POST, S.LEDGER_POSTED),
        (Step.RECORD_TRANSACTION, S.TRANSACTION_RECORDED),
        (Step.UPDATE_PORTFOLIO, S.HOLDINGS_UPDATED),
        (Step.SEND_EVENT, S.COMPLETED),
    ),
    FlowKind.DEPOSIT: ((Step.LEDGER_MOVE, S.LEDGER_MOVED), (Step.SEND_DEPOSIT_EVENT, S.COMPLETED)),
    FlowKind.DEPOSIT_ANNOUNCE: ((Step.SEND_DEPOSIT_EVENT, S.COMPLETED),),
    FlowKind.WITHDRAWAL_ANNOUNCE: ((Step.SEND_EVENT, S.COMPLETED),),
}


#: compensations: (state a step was refused in, the state the refusal diverts to, the step out of it, the
#: terminal state it reaches). Money that moved is never left unannounced: the move is undone.
FLOW_BRANCHES: dict[FlowKind, tuple[tuple[PayoutState, PayoutState, Step, PayoutState], ...]] = {
    FlowKind.DEPOSIT: ((S.LEDGER_MOVED, S.ANNOUNCE_REFUSED, Step.REVERSE_LEDGER_MOVE, S.MOVE_REVERSED),),
}


def divert_target(flow: FlowKind, state: PayoutState) -> PayoutState | None:
    """Where a step of ``flow`` refused for good in ``state`` diverts the operation (None: no compensation)."""
    for refused_in, diverted, _step, _end in FLOW_BRANCHES.get(flow, ()):
        if refused_in is state:
            return diverted
    return None


def _next_steps(flow: FlowKind) -> dict[PayoutState, tuple[Step, tuple[PayoutState, ...]]]:
    """State -> (the step that moves it on, the states that step passes through to its target)."""
    states = FLOW_STATES[flow]
    table: dict[PayoutState, tuple[Step, tuple[PayoutState, ...]]] = {}
    start = 0
    for step, target in FLOW_STEPS[flow]:
        end = states.index(target)
        for i in range(start, end):
            table[states[i]] = (step, states[i + 1 : end + 1])
        start = end
    for _refused_in, diverted, step, end_state in FLOW_BRANCHES.get(flow, ()):
        table[diverted] = (step, (end_state,))
    return table


#: flow -> state -> (step, states passed through): what moves an operation on
NEXT: dict[FlowKind, dict[PayoutState, tuple[Step, tuple[PayoutState, ...]]]] = {f: _next_steps(f) for f in FlowKind}


def next_step(flow: FlowKind, state: PayoutState) -> tuple[Step, tuple[PayoutState, ...]] | None:
    """The step that moves an operation of ``flow`` on from ``state`` and the states it passes through."""
    return NEXT[flow].get(state)


#: states a run drives on by itself, per flow (HELD waits for approval, NEEDS_ATTENTION for an operator)
EXECUTABLE: dict[FlowKind, frozenset[PayoutState]] = {f: frozenset(NEXT[f]) for f in FlowKind}
EXECUTABLE_STATES = frozenset().union(*EXECUTABLE.values())
#: states reached once money moved (the first step of a flow with a ledger step, or the event of an
#: announce-only one): never cancelled, never rolled back
PAST_MONEY: dict[FlowKind, frozenset[PayoutState]] = {
    f: frozenset(FLOW_STATES[f][1:]).union(*({b[1], b[3]} for b in FLOW_BRANCHES.get(f, ()))) for f in FlowKind
}
PAST_LEDGER = PAST_MONEY[FlowKind.WITHDRAWAL]
_FORWARD = frozenset().union(*(set(states[1:]) for states in FLOW_STATES.values()))
#: end states: done, cancelled before money moved, or moved and moved back
TERMINAL_STATES = frozenset({S.COMPLETED, S.CANCELLED, S.MOVE_REVERSED})
OPEN_STATES = frozenset(set(PayoutState) - TERMINAL_STATES)

#: The journal column stamped when an operation first reaches each state of a flow (one vocabulary:
#: the journal's SQL, the reports and the renderers all take it from here).
STAMP_COLUMN: dict[PayoutState, str] = {
    state: f"{state.value.lower()}_at" for flow in FlowKind for state in FLOW_STATES[flow][1:]
}

#: the withdrawal's step out of each state (kept for readers of the withdrawal alone)
NEXT_STEP: dict[PayoutState, tuple[Step, PayoutState]] = {
    state: (step, through[-1]) for state, (step, through) in NEXT[FlowKind.WITHDRAWAL].items()
}


def _transitions(flow: FlowKind) -> dict[PayoutState, frozenset[PayoutState]]:
    states = FLOW_STATES[flow]
    allowed: dict[PayoutState, set[PayoutState]] = {state: set() for state in PayoutState}
    for i, state in enumerate(states[:-1]):
        allowed[state] |= {states[i + 1], S.NEEDS_ATTENTION}
    allowed[S.HELD] |= {S.PLANNED, S.CANCELLED}
    allowed[S.PLANNED].add(S.CANCELLED)
    # an operator's retry puts it back in the state it stopped in (CANCELLED only before money moved:
    # the journal checks that, the table cannot)
    allowed[S.NEEDS_ATTENTION] |= set(states[:-1]) | {S.CANCELLED}
    for refused_in, diverted, _step, end_state in FLOW_BRANCHES.get(flow, ()):
        allowed[refused_in].add(diverted)
        allowed[diverted] |= {end_state, S.NEEDS_ATTENTION}
        allowed[S.NEEDS_ATTENTION].add(diverted)
    return {state: frozenset(targets) for state, targets in allowed.items()}


TRANSITIONS_BY_FLOW: dict[FlowKind, Mapping[PayoutState, frozenset[PayoutState]]] = {
    flow: _transitions(flow) for flow in FlowKind
}
#: every transition some flow allows
TRANSITIONS: Mapping[PayoutState, frozenset[PayoutState]] = {
    state: frozenset().union(*(table[state] for table in TRANSITIONS_BY_FLOW.values())) for state in PayoutState
}


def path(start: PayoutState, end: PayoutState, flow: FlowKind = FlowKind.WITHDRAWAL) -> list[PayoutState]:
    """The states passed through going forward from ``start`` to ``end`` along the flow."""
    states = FLOW_STATES[flow]
    i, j = states.index(start), states.index(end)
    if j <= i:
        raise InvalidTransitionError(f"{start} -> {end} is not forward")
    return list(states[i + 1 : j + 1])


def check_transition(current: PayoutState, target: PayoutState, flow: FlowKind | None = None) -> None:
    """Refuse a transition the flow (any flow when None) does not allow."""
    table = TRANSITIONS if flow is None else TRANSITIONS_BY_FLOW[flow]
    if target not in table[current]:
        raise InvalidTransitionError(f"operation cannot go from {current} to {target}")
