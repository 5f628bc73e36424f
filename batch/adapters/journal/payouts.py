"""The journal's payouts: claims with a lease, step intents and outcomes, stops (operators' actions: oversight.py).

Every payout state change is guarded by the state it expects (``WHERE state = :from_state``, and the
lease for a worker's change); a writer that lost a race gets InvalidTransitionError instead of silently
overwriting. The transition rules themselves are the domain's (``batch.domain.payout``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Connection

from batch.adapters.journal.base import JournalBase
from batch.adapters.journal.decisions import DecisionStore
from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical
from batch.domain.payout import EXECUTABLE_STATES, OPEN_STATES, FlowKind, PayoutState, Step, check_transition
from batch.domain.records import PayoutRecord
from batch.errors import InvalidTransitionError

Q = load_queries("journal_payouts")


class PayoutStore(JournalBase):
    # -- claiming ------------------------------------------------------------------------------------
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
    ) -> list[PayoutRecord]:
        """Lease up to ``limit`` executable payouts nobody else holds (FOR UPDATE SKIP LOCKED).

        ``run_id`` keeps to payouts planned by that run; ``not_stalled_in`` skips those stalled in that run.
        """
        with self._tx() as conn:
            conn.execute(Q.check_fence.text, {"run_id": not_stalled_in})  # the claiming run (migration 0012)
            rows = conn.execute(
                Q.claim.text,
                {
                    "worker": worker,
                    "n": limit,
                    "lease": lease_seconds,
                    "states": [s.value for s in states],
                    "flows": [f.value for f in (flows or list(FlowKind))],
                    "portfolio_ids": None if portfolio_ids is None else list(portfolio_ids),
                    "run_id": run_id,
                    "not_stalled_in": not_stalled_in,
                },
            ).all()
        return [PayoutRecord.from_mapping(r._mapping) for r in rows]

    def release_lease(self, payout_id: uuid.UUID, worker: str) -> None:
        with self._statement() as cursor:
            cursor.execute(Q.release_lease.pyformat, {"id": payout_id, "worker": worker})

    def get_payout(self, payout_id: uuid.UUID) -> PayoutRecord | None:
        with self._read() as conn:
            row = conn.execute(Q.get.text, {"id": payout_id}).first()
        return None if row is None else PayoutRecord.from_mapping(row._mapping)

    def attempts_by_step(
        self, payout_ids: Sequence[uuid.UUID], run_id: uuid.UUID
    ) -> dict[tuple[uuid.UUID, str], tuple[int, int]]:
        """Attempts per (payout, step) for a claimed batch, in one query: (all of them, failed in ``run_id``).

        All attempts decide whether to read back first; only the run's failed ones (a recorded error,
        not an intent a crash cut off) count against the attempt cap.
        """
        if not payout_ids:
            return {}
        with self._read() as conn:
            rows = conn.execute(Q.attempts_by_step.text, {"ids": list(payout_ids), "run_id": run_id})
            return {(r.payout_id, r.step): (int(r.n), int(r.failed)) for r in rows}

    # -- a step's intent and outcome -------------------------------------------------------------------
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
    ) -> int:
        """Record the intent to call an external system (durably, before the call); returns the attempt id.

        One statement (``batch.step_begin``): guard the state and lease, renew the lease, apply the
        column updates, insert the attempt. No audit row here: the intent is durable in step_attempts
        and goes into the audit log with the outcome (one audited transaction per step).
        """
        with self._statement() as cursor:
            cursor.execute(
                Q.step_begin.pyformat,
                {
                    "payout_id": payout.id,
                    "state": payout.state.value,
                    "worker": worker,
                    "lease": self.lease_seconds,
                    "run_id": run_id,
                    "step": step.value,
                    "intent": canonical(intent),
                    "updates": canonical(payout_updates or {}),
                },
            )
            row = cursor.fetchone()
        assert row is not None
        attempt_id = int(row["step_begin"])
        self._intents[attempt_id] = intent
        return attempt_id

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
    ) -> PayoutRecord:
        """Record the outcome of an attempt and move the payout through ``through`` states (guarded).

        ``note`` is added to the decision's details (``execution_note``) so the report shows it.
        Returns the payout as it is afterwards.
        """
        intent = self._intents.pop(attempt_id, None)
        if intent is None:  # begun by another process (or before a restart): read the intent back
            with self._read() as conn:
                intent = conn.execute(Q.intent_of.text, {"id": attempt_id}).scalar() or {}
        current = payout
        for target in through:
            check_transition(current.state, target, payout.flow)
            current = replace(current, state=target)
        # one audit row per outcome; it names the state transitions it made
        states: dict[str, Any] = {"from": payout.state, "through": list(through)} if through else {}
        states |= {"attempt": attempt_id, "intent": intent}
        with self._statement() as cursor:
            cursor.execute(
                Q.step_finish.pyformat,
                {
                    "attempt_id": attempt_id,
                    "outcome": outcome,
                    "detail": canonical(detail),
                    "payout_id": payout.id,
                    "from_state": payout.state.value,
                    "worker": worker,
                    "through": [s.value for s in through],
                    "updates": canonical(payout_updates or {}),
                    "note": note,
                    "actor": actor,
                    "action": f"step.{step.value.lower()}.{outcome.lower()}",
                    "run_id": run_id,
                    "portfolio_id": payout.portfolio_id,
                    "audit": canonical({**detail, **states}),
                },
            )
            row = cursor.fetchone()
        if row is None or row["id"] is None:
            return payout  # nothing to apply (e.g. a transient error's outcome)
        return PayoutRecord.from_mapping(row)

    # -- stops --------------------------------------------------------------------------------------------
    def _transition(
        self,
        conn: Connection,
        payout: PayoutRecord,
        target: PayoutState,
        *,
        worker: str | None,
        failing_step: str | None = None,
        last_error: str | None = None,
    ) -> PayoutRecord:
        check_transition(payout.state, target, payout.flow)
        row = conn.execute(
            Q.transition.text,
            {
                "to_state": target.value,
                "id": payout.id,
                "from_state": payout.state.value,
                "worker": worker,
                "failing_step": failing_step,
                "last_error": last_error,
            },
        ).first()
        if row is None:
            raise InvalidTransitionError(f"payout {payout.id}: {payout.state} -> {target} lost a race")
        return PayoutRecord.from_mapping(row._mapping)

    def _close_attempt(self, conn: Connection, attempt_id: int | None, outcome: str, detail: Mapping[str, Any]) -> None:
        if attempt_id is None:
            return
        self._intents.pop(attempt_id, None)
        conn.execute(Q.close_attempt.text, {"outcome": outcome, "detail": canonical(detail), "id": attempt_id})

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
    ) -> PayoutRecord:
        """Stop a payout for a human: the exact step, the error and the evidence are recorded."""
        with self._tx() as conn:
            self._close_attempt(conn, attempt_id, "PERMANENT_ERROR", {"error": error, **(evidence or {})})
            updated = self._transition(
                conn,
                payout,
                PayoutState.NEEDS_ATTENTION,
                worker=worker,
                failing_step=step.value if step else None,
                last_error=error[:2000],
            )
            self._audit(
                conn,
                actor=actor,
                action="payout.needs_attention",
                run_id=run_id,
                payout_id=payout.id,
                portfolio_id=payout.portfolio_id,
                details={"from": payout.state, "step": step, "error": error, "evidence": evidence or {}},
            )
        return updated

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
    ) -> PayoutRecord:
        """CANCEL a payout that has not reached the ledger (the only kind that may be cancelled).

        ``revise`` (decision, reason) replaces the planner's decision; ``note`` and ``detail`` go with it
        into the decision's details, so the report says why and on what evidence.
        """
        with self._tx() as conn:
            self._close_attempt(conn, attempt_id, "REFUSED", detail or {})
            if payout.ledger_reference is not None:
                raise InvalidTransitionError(f"payout {payout.id} reached the ledger; it cannot be cancelled")
            updated = self._transition(conn, payout, PayoutState.CANCELLED, worker=worker, last_error=reason)
            if revise is not None:
                DecisionStore.revise_decision(conn, payout.id, *revise, note=note, evidence=detail)
            self._audit(
                conn,
                actor=actor,
                action="payout.cancelled",
                run_id=run_id,
                payout_id=payout.id,
                portfolio_id=payout.portfolio_id,
                details={"reason": reason, **(detail or {})},
            )
        return updated

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
        """Revise the decision of an operation whose money moved (e.g. a refused deposit: HOLD, reason)."""
        with self._tx() as conn:
            DecisionStore.revise_decision(conn, payout.id, decision, reason, note=note, evidence=evidence)
            self._audit(
                conn,
                actor=actor,
                action="payout.decision_revised",
                run_id=run_id,
                payout_id=payout.id,
                portfolio_id=payout.portfolio_id,
                details={"state": payout.state, "decision": decision, "reason": reason, "note": note, **evidence},
            )

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
    ) -> PayoutRecord:
        """Leave a payout in its state for the next run: this run spent its attempts on transient failures."""
        with self._tx() as conn:
            row = conn.execute(
                Q.stall.text,
                {
                    "run_id": run_id,
                    "error": f"{step.value} failed transiently {failures} times in this run: {error}"[:2000],
                    "step": step.value,
                    "id": payout.id,
                    "state": payout.state.value,
                    "worker": worker,
                },
            ).first()
            if row is None:
                raise InvalidTransitionError(f"payout {payout.id}: stalling in {payout.state} lost a race")
            self._audit(
                conn,
                actor=actor,
                action="payout.stalled",
                run_id=run_id,
                payout_id=payout.id,
                portfolio_id=payout.portfolio_id,
                details={"state": payout.state, "step": step, "failures": failures, "error": error},
            )
        return PayoutRecord.from_mapping(row._mapping)

    def count_stalled_in_run(self, run_id: uuid.UUID) -> int:
        """Payouts this run stalled and left open for the next run (an alert, not a stop)."""
        with self._read() as conn:
            value = conn.execute(
                Q.count_stalled_in_run.text,
                {"run_id": run_id, "states": sorted(s.value for s in EXECUTABLE_STATES)},
            ).scalar_one()
        return int(value)

    # -- listings -----------------------------------------------------------------------------------------
    def list_payouts(self, states: Sequence[PayoutState], limit: int = 1000) -> list[PayoutRecord]:
        with self._read() as conn:
            rows = conn.execute(Q.list_in_states.text, {"states": [s.value for s in states], "n": limit}).all()
        return [PayoutRecord.from_mapping(r._mapping) for r in rows]

    def count_open_of_run(self, run_id: uuid.UUID) -> int:
        """Payouts of a run still to be executed or in flight (for progress across worker processes)."""
        with self._read() as conn:
            value = conn.execute(
                Q.count_open_of_run.text, {"run_id": run_id, "states": sorted(s.value for s in EXECUTABLE_STATES)}
            ).scalar_one()
        return int(value)

    def release_leases_of(self, owners: Sequence[str]) -> int:
        """Release the payout leases of processes known to be gone; returns how many were released."""
        if not owners:
            return 0
        with self._tx() as conn:
            return len(conn.execute(Q.release_leases_of.text, {"owners": list(owners)}).all())

    def held_elsewhere(self, mine: Sequence[str]) -> list[dict[str, Any]]:
        """Open operations leased (live lease) by a process other than ``mine``: in progress elsewhere."""
        with self._read() as conn:
            rows = conn.execute(
                Q.held_elsewhere.text, {"states": sorted(s.value for s in EXECUTABLE_STATES), "mine": list(mine)}
            )
            return [dict(r._mapping) for r in rows]

    def in_flight_of_run(self, run_id: uuid.UUID) -> dict[str, dict[str, int]]:
        """The open payouts a run planned or drove, per state: count and how many moved money already."""
        with self._read() as conn:
            rows = conn.execute(
                Q.in_flight_of_run.text, {"run_id": run_id, "states": sorted(s.value for s in EXECUTABLE_STATES)}
            ).all()
        return {r.state: {"count": int(r.n), "moved": int(r.moved)} for r in rows}

    def count_open(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(Q.count_by_state.text, {"states": [s.value for s in OPEN_STATES]})
            return {r.state: int(r.n) for r in rows}
