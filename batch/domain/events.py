"""InvestSuite's outbound bus events, as the domain sees them: which kind an event is, when it is stale,
and what a status update or a removal does to the portfolio's open payout. Pure: no I/O.

The documented names are ``portfolios.<action>`` (subject ``portfolios``); the integration pages also
write ``portfolio.<action>``: both spellings of the subject are accepted. The withdrawal request is
documented under the heading ``portfolios.withdrawal`` with the action ``divest-amount-update``; the
actions ``withdrawal`` and ``withdrawal-request`` (the cash-movements page) mean the same event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from batch.domain.payout import PAST_LEDGER, PayoutState


class EventKind(StrEnum):
    CREATION = "creation"
    STATUS_UPDATE = "status-update"
    WITHDRAWAL = "withdrawal"
    FUNDING = "funding"
    REMOVAL = "removal"


SUBJECTS = frozenset({"portfolios", "portfolio"})
_ACTIONS: dict[str, EventKind] = {
    "creation": EventKind.CREATION,
    "status-update": EventKind.STATUS_UPDATE,
    "divest-amount-update": EventKind.WITHDRAWAL,
    "withdrawal": EventKind.WITHDRAWAL,
    "withdrawal-request": EventKind.WITHDRAWAL,
    "funding": EventKind.FUNDING,
    "removal": EventKind.REMOVAL,
}
#: the only envelope version documented ("for now, this will always be 1.0.0"); same major = understood
SUPPORTED_MAJOR = "1"


def classify(subject: str, action: str) -> EventKind | None:
    """The kind of a portfolio event, or None for anything else (recorded and acknowledged, not handled).

    ``subject`` may also carry the qualified name (``portfolios.withdrawal`` with the action
    ``divest-amount-update``, as the docs' heading and example combine them).
    """
    entity, _, qualifier = subject.strip().lower().partition(".")
    if entity not in SUBJECTS:
        return None
    kind = _ACTIONS.get(action.strip().lower())
    if qualifier and _ACTIONS.get(qualifier) not in (None, kind):
        return None  # "portfolios.removal" with the action "creation": not an event we know
    return kind


def version_understood(version: str) -> bool:
    return version.strip().split(".")[0] == SUPPORTED_MAJOR


def is_stale(created: datetime, last_handled: datetime | None) -> bool:
    """An event created before the last one handled for its portfolio (same kind) changes nothing.

    Equal times are not stale: two events of the same instant are both handled (each reads REST afresh).
    """
    return last_handled is not None and created < last_handled


class CancelAction(StrEnum):
    NOTHING_OPEN = "NOTHING_OPEN"
    CANCEL = "CANCEL"  # not leased by anyone: cancel it now (HELD, or PLANNED once we hold its lease)
    CLAIM_THEN_CANCEL = "CLAIM_THEN_CANCEL"  # PLANNED: take its lease first, so no executor posts it meanwhile
    LEFT_TO_COMPLETE = "LEFT_TO_COMPLETE"  # past the ledger: money moved, never cancelled
    LEFT_FOR_OPERATOR = "LEFT_FOR_OPERATOR"  # NEEDS_ATTENTION: a person decides


@dataclass(frozen=True)
class OpenPayout:
    state: PayoutState
    ledger_reference: str | None


def on_portfolio_gone(payout: OpenPayout | None) -> CancelAction:
    """What a status update to INACTIVE or a removal does to the portfolio's open payout."""
    if payout is None:
        return CancelAction.NOTHING_OPEN
    if payout.state in PAST_LEDGER or payout.ledger_reference is not None:
        return CancelAction.LEFT_TO_COMPLETE
    if payout.state is PayoutState.HELD:
        return CancelAction.CANCEL
    if payout.state is PayoutState.PLANNED:
        return CancelAction.CLAIM_THEN_CANCEL
    return CancelAction.LEFT_FOR_OPERATOR


#: the status value that stops a portfolio's pending payout (the others only update the registry)
INACTIVE = "INACTIVE"
