"""The journal as the step engine and the planners see it: a port (``typing.Protocol``).

``batch.adapters.journal.Journal`` implements it on PostgreSQL; ``tests/fakes.py`` implements it in
memory for the engine's unit tests (crash at every step boundary, exactly-once checks without a database).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from batch.domain.payout import FlowKind, PayoutState, Step
from batch.domain.records import PayoutRecord


class JournalPort(Protocol):
    def claim_payouts(
        self,
        *,
        worker: str,
        limit: int,
        lease_seconds: int,
        states: Sequence[PayoutState],
        flows: Sequence[FlowKind] | None = None,
        portfolio_ids: Sequence[str] | None = None,
        run_id: uuid.UUID | None = None,
        not_stalled_in: uuid.UUID | None = None,
    ) -> list[PayoutRecord]: ...

    def release_lease(self, payout_id: uuid.UUID, worker: str) -> None: ...

    def get_payout(self, payout_id: uuid.UUID) -> PayoutRecord | None: ...

    def attempts_by_step(
        self, payout_ids: Sequence[uuid.UUID], run_id: uuid.UUID
    ) -> dict[tuple[uuid.UUID, str], tuple[int, int]]: ...

    def begin_step(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        intent: Mapping[str, Any],
        payout_updates: Mapping[str, Any] | None = None,
    ) -> int: ...

    def finish_step(
        self,
        payout: PayoutRecord,
        attempt_id: int,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        outcome: str,
        detail: Mapping[str, Any],
        through: Sequence[PayoutState] = (),
        payout_updates: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> PayoutRecord: ...

    def needs_attention(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID | None,
        step: Step | None,
        actor: str,
        worker: str | None,
        error: str,
        evidence: Mapping[str, Any] | None = None,
        attempt_id: int | None = None,
    ) -> PayoutRecord: ...

    def cancel_before_ledger(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID | None,
        actor: str,
        worker: str | None,
        reason: str,
        revise: tuple[str, str] | None,
        attempt_id: int | None = None,
        detail: Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> PayoutRecord: ...

    def revise_after_money_moved(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        actor: str,
        decision: str,
        reason: str,
        note: str,
        evidence: Mapping[str, Any],
    ) -> None:
        """Revise the decision behind an operation whose money moved (a compensation), with an audit row."""
        ...

    def stall(
        self,
        payout: PayoutRecord,
        *,
        run_id: uuid.UUID,
        step: Step,
        actor: str,
        worker: str,
        failures: int,
        error: str,
    ) -> PayoutRecord: ...
