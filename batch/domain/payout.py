"""The payout state machine: one enum, one transition table, and which step moves each state on.

The same transitions are guarded in SQL (``UPDATE ... WHERE state = :expected``) by the journal,
so a concurrent writer loses loudly instead of silently.

    HELD --approve--> PLANNED --LEDGER_POST--> LEDGER_POSTED --RECORD_TRANSACTION--> TRANSACTION_RECORDED
      --UPDATE_PORTFOLIO (divest and holdings in one PATCH)--> DIVEST_CLEARED --> HOLDINGS_UPDATED
      --SEND_EVENT--> EVENT_SENT --> COMPLETED
    PLANNED/HELD --cancel--> CANCELLED (never once the ledger was posted)
    any open state --> NEEDS_ATTENTION --retry--> the state it stopped in
"""

from __future__ import annotations

from enum import StrEnum

from batch.errors import InvalidTransitionError


class PayoutState(StrEnum):
    PLANNED = "PLANNED"
    HELD = "HELD"
    LEDGER_POSTED = "LEDGER_POSTED"
    TRANSACTION_RECORDED = "TRANSACTION_RECORDED"
    DIVEST_CLEARED = "DIVEST_CLEARED"
    HOLDINGS_UPDATED = "HOLDINGS_UPDATED"
    EVENT_SENT = "EVENT_SENT"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


class Step(StrEnum):
    LEDGER_POST = "LEDGER_POST"
    RECORD_TRANSACTION = "RECORD_TRANSACTION"
    UPDATE_PORTFOLIO = "UPDATE_PORTFOLIO"
    SEND_EVENT = "SEND_EVENT"


S = PayoutState
_FLOW = (
    S.PLANNED,
    S.LEDGER_POSTED,
    S.TRANSACTION_RECORDED,
    S.DIVEST_CLEARED,
    S.HOLDINGS_UPDATED,
    S.EVENT_SENT,
    S.COMPLETED,
)

TRANSITIONS: dict[PayoutState, frozenset[PayoutState]] = {
    S.HELD: frozenset({S.PLANNED, S.CANCELLED}),
    S.PLANNED: frozenset({S.LEDGER_POSTED, S.CANCELLED, S.NEEDS_ATTENTION}),
    S.LEDGER_POSTED: frozenset({S.TRANSACTION_RECORDED, S.NEEDS_ATTENTION}),
    S.TRANSACTION_RECORDED: frozenset({S.DIVEST_CLEARED, S.NEEDS_ATTENTION}),
    S.DIVEST_CLEARED: frozenset({S.HOLDINGS_UPDATED, S.NEEDS_ATTENTION}),
    S.HOLDINGS_UPDATED: frozenset({S.EVENT_SENT, S.NEEDS_ATTENTION}),
    S.EVENT_SENT: frozenset({S.COMPLETED, S.NEEDS_ATTENTION}),
    S.NEEDS_ATTENTION: frozenset(
        {
            S.PLANNED,
            S.LEDGER_POSTED,
            S.TRANSACTION_RECORDED,
            S.DIVEST_CLEARED,
            S.HOLDINGS_UPDATED,
            S.EVENT_SENT,
            S.CANCELLED,
        }
    ),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: The external step that moves a payout out of each state, and the state it lands in.
NEXT_STEP: dict[PayoutState, tuple[Step, PayoutState]] = {
    S.PLANNED: (Step.LEDGER_POST, S.LEDGER_POSTED),
    S.LEDGER_POSTED: (Step.RECORD_TRANSACTION, S.TRANSACTION_RECORDED),
    S.TRANSACTION_RECORDED: (Step.UPDATE_PORTFOLIO, S.HOLDINGS_UPDATED),
    S.DIVEST_CLEARED: (Step.UPDATE_PORTFOLIO, S.HOLDINGS_UPDATED),
    S.HOLDINGS_UPDATED: (Step.SEND_EVENT, S.COMPLETED),
    S.EVENT_SENT: (Step.SEND_EVENT, S.COMPLETED),
}

#: The journal column stamped when a payout first reaches each state of the flow (one vocabulary:
#: the journal's SQL, the reports and the renderers all take it from here).
STAMP_COLUMN: dict[PayoutState, str] = {state: f"{state.value.lower()}_at" for state in _FLOW[1:]}

OPEN_STATES = frozenset(set(PayoutState) - {S.COMPLETED, S.CANCELLED})
#: Open payouts a run drives on by itself (HELD waits for approval, NEEDS_ATTENTION for an operator).
EXECUTABLE_STATES = frozenset(NEXT_STEP)
#: States in which money has left the customer's ledger account: never cancelled, never rolled back.
PAST_LEDGER = frozenset(_FLOW[1:])


def path(start: PayoutState, end: PayoutState) -> list[PayoutState]:
    """The states passed through going forward from ``start`` to ``end`` along the normal flow."""
    i, j = _FLOW.index(start), _FLOW.index(end)
    if j <= i:
        raise InvalidTransitionError(f"{start} -> {end} is not forward")
    return list(_FLOW[i + 1 : j + 1])


def check_transition(current: PayoutState, target: PayoutState) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransitionError(f"payout cannot go from {current} to {target}")
