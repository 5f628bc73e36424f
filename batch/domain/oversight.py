"""Who acts on payouts, as the database says, and what an operator's action did, in words.

People act through their own login role, a member of ``batch_operator``; the job's processes log in as
a member of ``batch_job``, which never approves, retries or cancels (a superuser is a member of every
role, ``batch_job`` included). A HELD payout above its currency's four-eyes threshold needs approvals
from two different login roles. The database enforces all of it (migration 0005); these values only
carry and describe what it answered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from batch.domain.money import quantize_down
from batch.domain.payout import PayoutState
from batch.errors import OperatorRefusedError, UnknownCurrencyError

JOB_ROLE = "batch_job"
OPERATOR_ROLE = "batch_operator"


def require_reason(reason: str) -> str:
    """An operator's reason, stripped; empty or blank reasons are refused (the database refuses them too)."""
    if not reason or not reason.strip():
        raise OperatorRefusedError("a reason is required (empty or blank reasons are refused)")
    return reason.strip()


def display_amount(amount: Decimal, currency: str) -> str:
    """``60,000.00 EUR``: the currency's minor unit, thousands separated (for people, never for writes)."""
    try:
        shown = quantize_down(amount, currency)
    except UnknownCurrencyError:
        shown = amount.normalize()
    return f"{shown:,f} {currency}"


@dataclass(frozen=True)
class Identity:
    """Who the database says this connection is."""

    login_role: str
    current_role: str
    application_name: str
    superuser: bool
    member_of_job: bool
    member_of_operator: bool

    @property
    def may_act_on_payouts(self) -> bool:
        """A person: a member of batch_operator and not of batch_job."""
        return self.member_of_operator and not self.member_of_job

    def memberships(self) -> str:
        held = ((JOB_ROLE, self.member_of_job), (OPERATOR_ROLE, self.member_of_operator))
        roles = [role for role, member in held if member]
        text = ", ".join(roles) or "neither batch_job nor batch_operator"
        return f"{text} (superuser: a member of every role)" if self.superuser else text

    def describe(self) -> list[str]:
        """The lines ``batch whoami`` prints."""
        if self.may_act_on_payouts:
            verdict = "yes"
        elif self.member_of_job:
            verdict = "no: a member of batch_job (the job's role never acts as an operator)"
        else:
            verdict = "no: not a member of batch_operator"
        lines = [
            f"login role:       {self.login_role}",
            f"current role:     {self.current_role}",
            f"application name: {self.application_name}",
            f"member of:        {self.memberships()}",
            f"may approve, retry and cancel payouts: {verdict}",
        ]
        return lines


@dataclass(frozen=True)
class OperatorOutcome:
    """What an operator's approve, retry or cancel did, as the database recorded it."""

    payout_id: uuid.UUID
    from_state: PayoutState
    state: PayoutState
    amount: Decimal
    currency: str
    acted_as: str
    application_name: str
    approvals: int | None = None
    required: int | None = None
    approvers: tuple[str, ...] = ()

    def summary(self, action: str, reason: str) -> str:
        """One sentence saying what happened."""
        amount = display_amount(self.amount, self.currency)
        if action == "approve":
            head = f"approval {self.approvals} of {self.required} recorded for payout {self.payout_id}, {amount}"
            if self.state is PayoutState.HELD:
                return f"{head}; a second operator must approve (reason: {reason})"
            return f"{head}; released: the next run pays it (approved by {', '.join(self.approvers)}; reason: {reason})"
        verb = "retried" if action == "retry" else "cancelled"
        after = "; the next run resumes it" if action == "retry" else ""
        moved = f"{self.from_state.value} -> {self.state.value}"
        return f"payout {self.payout_id}, {amount}: {moved} ({verb}: {reason}){after}"

    def acted(self, display_name: str | None) -> str:
        """Who the database recorded, and the display name given beside it."""
        shown = f"; display name {display_name!r}" if display_name else ""
        return f"recorded as database role {self.acted_as} (application {self.application_name!r}{shown})"
