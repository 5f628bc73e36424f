"""Operators' actions and identity: who the database says we are, approve / retry / cancel a payout,
and the four-eyes thresholds the job runs with.

Each action is one call of a SECURITY DEFINER function (migration 0005) that checks the login role
(a member of batch_operator, not of batch_job), the reason and, for approvals, the four-eyes rule, then
changes the payout and appends the audit row in the same transaction. Refusals come back as
OperatorRefusedError (SQLSTATE BJ002) or InvalidTransitionError (BJ001, the payout is not in a state the
action applies to).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import psycopg

from batch.adapters.journal.base import JournalBase
from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical
from batch.domain.oversight import Identity, OperatorOutcome, require_reason
from batch.domain.payout import PayoutState
from batch.errors import OperatorRefusedError

Q = load_queries("journal_oversight")
ACTIONS = ("approve", "retry", "cancel")


class OversightStore(JournalBase):
    def whoami(self) -> Identity:
        """The login role, current role, application name and the memberships that matter."""
        with self._statement() as cursor:
            cursor.execute(Q.whoami.pyformat)
            row = cursor.fetchone()
        assert row is not None
        return Identity(**row)

    def operator_action(
        self, action: str, payout_id: uuid.UUID, *, reason: str, display_name: str | None
    ) -> OperatorOutcome:
        """``approve``, ``retry`` or ``cancel`` a payout as this connection's login role (one statement)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown operator action {action!r}")
        params = {"payout_id": payout_id, "reason": require_reason(reason), "display_name": display_name}
        try:
            with self._statement() as cursor:
                cursor.execute(Q[action].pyformat, params)
                row = cursor.fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise OperatorRefusedError(f"{exc}: only members of batch_operator may {action} payouts") from exc
        assert row is not None
        return _outcome(row)

    def record_approval_policy(
        self, four_eyes_threshold: Mapping[str, Decimal], *, run_id: uuid.UUID | None, display_name: str | None
    ) -> bool:
        """Record the four-eyes thresholds a run works with (audited when they change); True if they changed."""
        params = {"thresholds": canonical(dict(four_eyes_threshold)), "run_id": run_id, "display_name": display_name}
        with self._statement() as cursor:
            cursor.execute(Q.set_approval_policy.pyformat, params)
            row = cursor.fetchone()
        return bool(row and row["set_approval_policy"])


def _outcome(row: Mapping[str, Any]) -> OperatorOutcome:
    return OperatorOutcome(
        payout_id=row["payout_id"],
        from_state=PayoutState(row["from_state"]),
        state=PayoutState(row["state"]),
        amount=row["amount"],
        currency=str(row["currency"]),
        acted_as=str(row["acted_as"]),
        application_name=str(row["application_name"]),
        approvals=row["approvals"],
        required=row["required"],
        approvers=tuple(row["approvers"] or ()),
    )
