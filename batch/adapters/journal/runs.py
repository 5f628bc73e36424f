"""The journal's runs: the run lock, the run lifecycle and the run scale-out workers work for."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from typing import Any

from sqlalchemy.exc import OperationalError

from batch.adapters.journal.base import JournalBase, unavailable
from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical
from batch.errors import RunLockedError

RUN_LOCK_KEY = "batch.run"
Q = load_queries("journal_runs")


class RunStore(JournalBase):
    @contextmanager
    def run_lock(self, key: str = RUN_LOCK_KEY) -> Iterator[None]:
        """Hold the session advisory lock for the whole run; RunLockedError if someone else has it.

        The lock also proves liveness: a RUNNING run whose process died no longer holds it.
        """
        try:
            conn = self.engine.connect()
        except OperationalError as exc:
            raise unavailable(exc) from exc
        try:
            got = conn.execute(Q.try_lock.text, {"key": key}).scalar_one()
            conn.commit()
            if not got:
                raise RunLockedError("another run holds the run lock")
            try:
                yield
            finally:
                conn.execute(Q.unlock.text, {"key": key})
                conn.commit()
        finally:
            conn.close()

    def abandon_stale_runs(self, actor: str) -> list[uuid.UUID]:
        """Mark runs left RUNNING by a dead process ABANDONED (call only while holding the run lock)."""
        with self._tx() as conn:
            rows = list(conn.execute(Q.abandon_stale.text).scalars())
            for run_id in rows:
                self._audit(conn, actor=actor, action="run.abandoned", run_id=run_id)
            if rows:
                # The dead planner's leases would keep its payouts from this run until they expire
                # (lease_seconds, and at least 60 s after a step began): release them now. Scale-out
                # workers, which may outlive it, lease under other names and keep theirs.
                conn.execute(Q.release_planner_leases.text, {"ids": rows})
        return rows

    def start_run(
        self,
        *,
        run_id: uuid.UUID,
        business_date: date,
        trigger: str,
        operator: str,
        dry_run: bool,
        parameters: Mapping[str, Any],
        software_version: str,
        config_digest: str,
        host: str,
        pid: int,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                Q.start.text,
                {
                    "id": run_id,
                    "business_date": business_date,
                    "trigger": trigger,
                    "operator": operator,
                    "dry_run": dry_run,
                    "parameters": canonical(parameters),
                    "software_version": software_version,
                    "config_digest": config_digest,
                    "host": host,
                    "pid": pid,
                },
            )
            self._audit(
                conn,
                actor=operator,
                action="run.started",
                run_id=run_id,
                details={
                    "business_date": business_date,
                    "trigger": trigger,
                    "dry_run": dry_run,
                    "parameters": parameters,
                    "config_digest": config_digest,
                    "software_version": software_version,
                },
            )

    def finish_run(
        self,
        run_id: uuid.UUID,
        *,
        status: str,
        exit_code: int,
        summary: Mapping[str, Any],
        error: str | None,
        actor: str,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                Q.finish.text,
                {
                    "status": status,
                    "exit_code": exit_code,
                    "summary": canonical(summary),
                    "error": error,
                    "id": run_id,
                },
            )
            self._audit(
                conn,
                actor=actor,
                action="run.finished",
                run_id=run_id,
                details={"status": status, "exit_code": exit_code, "error": error, "totals": summary.get("totals", {})},
            )
            conn.execute(Q.store_audit_head.text, {"id": run_id})  # the head includes run.finished itself

    def mark_planned(self, run_id: uuid.UUID, actor: str, stats: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(Q.mark_planned.text, {"id": run_id})
            self._audit(conn, actor=actor, action="run.planned", run_id=run_id, details=stats)

    def current_planned_run(self) -> uuid.UUID | None:
        """The RUNNING, non-dry run whose plan is complete (what scale-out workers work for)."""
        with self._read() as conn:
            value = conn.execute(Q.current_planned.text).scalar_one_or_none()
        return value if isinstance(value, uuid.UUID) else None

    def get_run(self, run_id: uuid.UUID) -> Mapping[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(Q.get.text, {"id": run_id}).first()
        return None if row is None else dict(row._mapping)

    def run_status(self, run_id: uuid.UUID) -> str | None:
        run = self.get_run(run_id)
        return None if run is None else str(run["status"])
