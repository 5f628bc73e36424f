"""The journal's side of reconciliation: the payouts to check, and each reconciliation's recorded result."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from batch.adapters.journal.base import JournalBase
from batch.adapters.sqlfiles import load_queries
from batch.codec import canonical

Q = load_queries("journal_reconcile")


class ReconciliationStore(JournalBase):
    def payouts_to_reconcile(
        self, *, business_date: date | None = None, run_id: uuid.UUID | None = None
    ) -> Iterator[dict[str, Any]]:
        """The payouts of a business date, or a run's (its whole ``business_date`` plus those it created or
        drove of other dates), with the journal's evidence.

        Streamed (a server-side cursor, 1,000 rows per fetch): memory stays flat in the number of payouts.
        """
        with self._read() as conn:
            streamed = conn.execution_options(stream_results=True, yield_per=1000)
            if run_id is not None:
                rows = streamed.execute(Q.payouts_of_run.text, {"run_id": run_id, "business_date": business_date})
            else:
                rows = streamed.execute(Q.payouts_of_date.text, {"business_date": business_date})
            for row in rows:
                yield dict(row._mapping)

    def announcement_status(self, references: Sequence[str]) -> list[dict[str, Any]]:
        """Each of these bank payout references with its latest decision and live announcement (None when none)."""
        if not references:
            return []
        with self._read() as conn:
            rows = conn.execute(Q.announcement_status.text, {"references": list(references)}).mappings()
            return [dict(row) for row in rows]

    def announcements_of_date(self, business_date: date) -> list[dict[str, Any]]:
        """The live announcement operations runs of this business date created."""
        with self._read() as conn:
            rows = conn.execute(Q.announcements_of_date.text, {"business_date": business_date}).mappings()
            return [dict(row) for row in rows]

    def known_payout_ids(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these ids are payouts of the journal."""
        if not ids:
            return set()
        with self._read() as conn:
            return set(conn.execute(Q.known_payouts.text, {"ids": [str(i) for i in ids]}).scalars())

    def record_reconciliation(
        self,
        *,
        reconciliation_id: uuid.UUID,
        kind: str,
        business_date: date | None,
        run_id: uuid.UUID | None,
        actor: str,
        started_at: datetime,
        checked: int,
        figures: Mapping[str, Any],
        breaks: Sequence[Mapping[str, Any]],
    ) -> datetime:
        """Record a reconciliation and its audit row in one transaction; returns when it was recorded."""
        with self._tx() as conn:
            finished = conn.execute(
                Q.insert.text,
                {
                    "id": reconciliation_id,
                    "kind": kind,
                    "business_date": business_date,
                    "run_id": run_id,
                    "operator": actor,
                    "started_at": started_at,
                    "checked": checked,
                    "breaks": len(breaks),
                    "figures": canonical(figures),
                    "break_list": json.dumps(list(breaks), sort_keys=True, separators=(",", ":"), default=str),
                },
            ).scalar_one()
            self._audit(
                conn,
                actor=actor,
                action="reconcile.finished",
                run_id=run_id,
                details={
                    "reconciliation_id": reconciliation_id,
                    "kind": kind,
                    "business_date": business_date,
                    "checked": checked,
                    "breaks": len(breaks),
                    "break_types": sorted({str(b["type"]) for b in breaks}),
                },
            )
        value: datetime = finished
        return value

    def reconciliation_of_run(self, run_id: uuid.UUID) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(Q.latest_of_run.text, {"run_id": run_id}).first()
        return None if row is None else dict(row._mapping)

    def reconciliation_of_date(self, business_date: date) -> dict[str, Any] | None:
        """The latest reconciliation of the whole date (``reconcile --date`` or a run's, which covers its date)."""
        with self._read() as conn:
            row = conn.execute(Q.latest_of_date.text, {"business_date": business_date}).first()
        return None if row is None else dict(row._mapping)

    def latest_movement_of_date(self, business_date: date, as_of: datetime) -> datetime | None:
        """When money last moved for the value date by ``as_of`` (None: nothing moved by then)."""
        with self._read() as conn:
            value = conn.execute(
                Q.latest_movement_of_date.text, {"business_date": business_date, "as_of": as_of}
            ).scalar()
        return value if isinstance(value, datetime) else None
