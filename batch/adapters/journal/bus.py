"""The journal's side of bus events: the inbox keyed by event id, the portfolio registry, listener runs.

SQL in ``sql/queries/journal_bus.sql`` (tables of migration 0008). Every write commits before the
message is acknowledged: the listener acknowledges only what this store has made durable.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from batch.adapters.journal.base import JournalBase
from batch.adapters.journal.leases import LeaseSession, lease_is_live, listener_lease
from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical
from batch.domain.records import PayoutRecord

Q = load_queries("journal_bus")


@dataclass(frozen=True)
class Receipt:
    """What the inbox knew of an event when a delivery of it arrived."""

    status: str  # RECEIVED (handle it) or a final status (a duplicate: drop it)
    attempts: int
    duplicates: int
    new: bool

    @property
    def duplicate(self) -> bool:
        return self.status != "RECEIVED"


@dataclass(frozen=True)
class DecisionSummary:
    decision: str
    reason: str
    final_decision: str | None
    final_reason: str | None
    payout_id: uuid.UUID | None
    note: str | None


class BusStore(JournalBase):
    # -- the inbox -------------------------------------------------------------------------------------
    def receive(
        self,
        *,
        event_id: str,
        bus: str,
        subject: str,
        action: str,
        kind: str | None,
        portfolio_id: str | None,
        created: datetime | None,
        payload: Mapping[str, Any],
    ) -> Receipt:
        """Record a delivery: new, a redelivery of one still being handled (attempts + 1), or a duplicate."""
        with self._tx() as conn:
            row = conn.execute(
                Q.receive.text,
                {
                    "event_id": event_id,
                    "bus": bus,
                    "subject": subject[:100],
                    "action": action[:100],
                    "kind": kind,
                    "portfolio_id": portfolio_id,
                    "created": created,
                    "payload": canonical(payload),
                },
            ).one()
        return Receipt(row.status, int(row.attempts), int(row.duplicates), bool(row.inserted))

    def last_handled(self, portfolio_id: str, kind: str, event_id: str) -> datetime | None:
        """When the newest event of this kind already handled for the portfolio was created."""
        with self._read() as conn:
            row = conn.execute(
                Q.last_handled.text, {"portfolio_id": portfolio_id, "kind": kind, "event_id": event_id}
            ).first()
        return None if row is None else row.created

    def finish(self, event_id: str, *, status: str, outcome: str, run_id: uuid.UUID | None = None) -> None:
        """The event's final status and outcome (committed before the message is acknowledged)."""
        with self._tx() as conn:
            conn.execute(
                Q.finish.text, {"event_id": event_id, "status": status, "outcome": outcome[:2000], "run_id": run_id}
            )

    def dead_letter(self, key: str, *, bus: str, reason: str, body: bytes) -> bool:
        """Record a poison message (its body as text, truncated) with the reason; False if already recorded."""
        payload = {"body": body[:4000].decode("utf-8", errors="replace")}
        with self._tx() as conn:
            row = conn.execute(
                Q.dead_letter.text, {"event_id": key, "bus": bus, "reason": reason, "payload": canonical(payload)}
            ).one()
            if row.inserted:
                self._audit(conn, actor="listener", action="bus.dead_lettered", details={"key": key, "reason": reason})
        return bool(row.inserted)

    def inbox_row(self, event_id: str) -> Mapping[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(Q.get.text, {"event_id": event_id}).first()
        return None if row is None else dict(row._mapping)

    # -- the portfolio registry ----------------------------------------------------------------------------
    def register(self, *, portfolio_id: str, external_id: str | None, owner: str | None, event_id: str) -> bool:
        """``portfolios.creation``: store (or refresh) the link; True when the portfolio was new."""
        with self._tx() as conn:
            row = conn.execute(
                Q.register.text,
                {
                    "portfolio_id": portfolio_id,
                    "external_id": external_id,
                    "owner_user_id": owner,
                    "event_id": event_id,
                },
            ).one()
            self._audit(
                conn,
                actor="listener",
                action="registry.registered" if row.inserted else "registry.seen_again",
                portfolio_id=portfolio_id,
                details={"external_id": external_id, "owner_user_id": owner, "event_id": event_id},
            )
        return bool(row.inserted)

    def registry_touch(
        self, *, portfolio_id: str, external_id: str | None, event_id: str, status: str | None, removed: bool
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                Q.registry_touch.text,
                {
                    "portfolio_id": portfolio_id,
                    "external_id": external_id,
                    "event_id": event_id,
                    "status": status,
                    "removed": removed,
                },
            )

    def registry_entry(self, portfolio_id: str) -> Mapping[str, Any] | None:
        """The registry's link for an InvestSuite portfolio id (for the account mapping)."""
        with self._read() as conn:
            row = conn.execute(Q.registry_by_portfolio.text, {"portfolio_id": portfolio_id}).first()
        return None if row is None else dict(row._mapping)

    def registry_by_external_id(self, external_id: str) -> list[Mapping[str, Any]]:
        """The portfolios registered under a bank-side external id (for the reconciliation)."""
        with self._read() as conn:
            rows = conn.execute(Q.registry_by_external_id.text, {"external_id": external_id}).all()
        return [dict(r._mapping) for r in rows]

    # -- payouts and decisions, as the handlers need them ----------------------------------------------
    def open_payout(self, portfolio_id: str) -> PayoutRecord | None:
        with self._read() as conn:
            row = conn.execute(Q.open_payout.text, {"portfolio_id": portfolio_id}).first()
        return None if row is None else PayoutRecord.from_mapping(row._mapping)

    def latest_payout(self, portfolio_id: str) -> PayoutRecord | None:
        with self._read() as conn:
            row = conn.execute(Q.latest_payout.text, {"portfolio_id": portfolio_id}).first()
        return None if row is None else PayoutRecord.from_mapping(row._mapping)

    def decision_in_run(self, run_id: uuid.UUID, portfolio_id: str) -> DecisionSummary | None:
        with self._read() as conn:
            row = conn.execute(Q.decision_in_run.text, {"run_id": run_id, "portfolio_id": portfolio_id}).first()
        if row is None:
            return None
        details = row.details or {}
        note = details.get("execution_note") or details.get("note")
        return DecisionSummary(
            row.decision, row.reason, row.final_decision, row.final_reason, row.payout_id, str(note) if note else None
        )

    def ping(self) -> bool:
        """Whether the journal answers (the listener's readiness)."""
        try:
            with self._read() as conn:
                conn.execute(Q.ping.text).scalar_one()
        except Exception:
            return False
        return True

    # -- listener runs ---------------------------------------------------------------------------------------
    @contextmanager
    def instance_lock(self, instance: str, *, ttl_seconds: float, actor: str = "listener") -> Iterator[LeaseSession]:
        """Hold this listener instance's lease (migration 0012) for its whole life; the caller keeps it
        alive with a heartbeat, which takes the session lock again after a journal restart."""
        lease = LeaseSession(
            self.engine, listener_lease(instance), ttl_seconds=ttl_seconds, host=socket.gethostname(), pid=os.getpid()
        )
        lease.acquire(None, actor=actor)
        try:
            yield lease
        finally:
            lease.release()

    def abandon_dead_listeners(self, actor: str, own_instance: str) -> tuple[list[uuid.UUID], list[str]]:
        """Mark RUNNING listener runs whose process died ABANDONED and release their payout leases at once.

        Never this listener's own runs. Another instance is dead when its lease is (``lease_is_live``):
        its session lock gone while the server kept running, its process gone from this host, or its
        heartbeat expired; a journal restart alone kills no one. Its runs are fenced and its lease
        released, so should it live on somewhere, its heartbeat finds out and it stops.
        Returns the runs, and the portfolios whose payouts were released (whatever run planned them).
        """
        abandoned: list[uuid.UUID] = []
        portfolios: list[str] = []
        with self._read() as probe:
            runs = probe.execute(Q.listener_runs.text, {"own_instance": own_instance}).all()
            probe.commit()
            for run in runs:
                alive, why = lease_is_live(probe, listener_lease(run.instance), host=socket.gethostname())
                if alive:
                    continue
                with self._tx() as conn:
                    if conn.execute(Q.abandon_listener_run.text, {"id": run.id}).first() is None:
                        continue
                    conn.execute(Q.release_listener_lease.text, {"name": listener_lease(run.instance)})
                    released = list(conn.execute(Q.release_worker_leases.text, {"worker": run.worker}).scalars())
                    self._audit(
                        conn,
                        actor=actor,
                        action="run.abandoned",
                        run_id=run.id,
                        details={"leases_released": len(released), "why": why},
                    )
                abandoned.append(run.id)
                portfolios.extend(released)
        return abandoned, portfolios
