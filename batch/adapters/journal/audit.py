"""The journal's audit log: verify the hash chain (from the last checkpoint, or whole), record checkpoints.

The chain itself is built by the database (``batch.audit_chain`` trigger, migrations 0001 and 0005); the
verification recomputes every hash here (``batch.domain.audit``), a page of rows at a time (memory flat
in the chain's length), and checks that the chain still passes through every witness: the anchors and
``--expect`` heads the caller gives, and the journal's own verified checkpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

import psycopg

from batch.adapters.journal.audit_segments import MIN_SEGMENT_ROWS, PAGE_ROWS, joined, verify_in_parallel, walk_rows
from batch.adapters.journal.base import AUDIT, JournalBase
from batch.domain.audit import (
    GENESIS_HASH,
    Anchor,
    AuditVerification,
    ChainWalk,
    check_witnesses,
    trusted_until,
    verification,
)
from batch.domain.oversight import require_reason
from batch.errors import OperatorRefusedError


@dataclass(frozen=True)
class _Checkpoint:
    """A row of batch.audit_checkpoints; a re-anchoring when ``accepted_break_seq`` is set."""

    id: int
    seq: int
    hash: str
    verified_at: datetime
    verified_by: str
    accepted_break_seq: int | None = None
    reason: str | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Checkpoint:
        return cls(**{k: row[k] for k in ("id", "seq", "hash", "verified_at", "verified_by")},
                   accepted_break_seq=row.get("accepted_break_seq"), reason=row.get("reason"))  # fmt: skip

    @property
    def anchor(self) -> Anchor:
        when = self.verified_at.isoformat(timespec="seconds")
        return Anchor(self.seq, self.hash.strip(), f"the checkpoint of {when} by {self.verified_by}")

    def notes(self) -> list[str]:
        if self.accepted_break_seq is None:
            return []
        when = self.verified_at.isoformat(timespec="seconds")
        return [
            f"row {self.accepted_break_seq} accepted by {self.verified_by} at {when} (re-anchored at seq {self.seq}:"
            f" {self.reason})"
        ]

    def excuses(self, seq: int) -> bool:
        """An anchor at ``seq`` lies in the span this re-anchoring accepted."""
        return self.accepted_break_seq is not None and self.accepted_break_seq <= seq < self.seq

    def supersedes(self, other: _Checkpoint) -> bool:
        """A checkpoint recorded before this re-anchoring at or after the accepted row no longer counts."""
        return self.accepted_break_seq is not None and other.id < self.id and other.seq >= self.accepted_break_seq


class AuditStore(JournalBase):
    def verify_audit(
        self,
        *,
        since_checkpoint: bool = False,
        anchors: Sequence[Anchor] = (),
        record_checkpoint: bool = False,
        display_name: str | None = None,
        batch_size: int = PAGE_ROWS,
    ) -> AuditVerification:
        """Recompute the chain and check it passes through every anchor; name the first broken row.

        ``since_checkpoint``: only the latest checkpoint's row and the rows after it, once that row still
        carries the checkpoint's hash (else the whole chain, every checkpoint a witness, walking on past
        the rows people accepted by re-anchoring). ``record_checkpoint``: when the chain verifies, record
        its head as a new checkpoint (stamped by the database with who and when).
        """
        with self._statement() as cursor:
            cursor.execute(AUDIT.head.pyformat)
            top = cursor.fetchone()
            head = (0, GENESIS_HASH) if top is None else (int(top["seq"]), str(top["hash"]))
            witnesses, from_seq, start = list(anchors), 0, (0, GENESIS_HASH, 1)
            notes: list[str] = []
            reanchored: dict[int, _Checkpoint] = {}
            # an anchor that disagrees with the database: no checkpoint past the last agreeing anchor is trusted
            trust_until = trusted_until(anchors, _stored_hashes(cursor, [a.seq for a in anchors]))
            if since_checkpoint:
                cursor.execute(AUDIT.latest_checkpoint_until.pyformat, {"until": trust_until})
                latest = cursor.fetchone()
                carried = None if latest is None else _hashes(cursor, [latest["seq"]]).get(latest["seq"])
                if latest is not None and carried is not None and carried.hash == latest["hash"]:
                    # the walk starts at the checkpoint row itself: its content must still give its hash
                    checkpoint = _Checkpoint.of(latest)
                    witnesses.append(checkpoint.anchor)
                    notes += checkpoint.notes()
                    from_seq = checkpoint.seq
                    start = (checkpoint.seq - 1, carried.prev_hash, carried.hash_version)
            if from_seq == 0:  # the whole chain: every checkpoint is a witness, re-anchorings let it walk on
                cursor.execute(AUDIT.checkpoints.pyformat)
                checkpoints = [c for c in map(_Checkpoint.of, cursor.fetchall()) if c.seq <= trust_until]
                reanchored = {c.accepted_break_seq: c for c in checkpoints if c.accepted_break_seq is not None}
                witnesses = [w for w in witnesses if not any(c.excuses(w.seq) for c in reanchored.values())]
                witnesses += [c.anchor for c in checkpoints if not any(r.supersedes(c) for r in reanchored.values())]
            walked = 0
            while True:
                walk = ChainWalk(*start)
                walk_rows(cursor.connection, walk, after=start[0], until=head[0], batch_size=batch_size)
                broken = walk.finish()
                accepted = reanchored.get(broken.seq) if broken is not None else None
                carried = None if accepted is None else _hashes(cursor, [accepted.seq]).get(accepted.seq)
                if accepted is None or carried is None or carried.hash != accepted.hash or accepted.seq <= start[0]:
                    break
                walked += walk.rows
                notes += accepted.notes()
                start = (accepted.seq - 1, carried.prev_hash, carried.hash_version)
            stored = _stored_hashes(cursor, [w.seq for w in witnesses])
            result = verification(
                walk, check_witnesses(witnesses, stored, head), from_seq=from_seq, anchors_checked=len(witnesses)
            )
            result = replace(result, rows=result.rows + walked, accepted=tuple(notes))
            if result.ok and record_checkpoint and result.head_seq > from_seq:
                recorded = _record_checkpoint(cursor, result, full=from_seq == 0, display_name=display_name)
                result = replace(result, checkpointed=recorded)
        return result

    def verify_full(
        self,
        *,
        processes: int,
        anchors: Sequence[Anchor] = (),
        display_name: str | None = None,
        min_rows: int = MIN_SEGMENT_ROWS,
    ) -> AuditVerification:
        """The whole chain, in parallel over segments when it is intact (else sequentially, for the blame).

        Rows people accepted by re-anchoring make the walk jump, which only the sequential walk does.
        """
        with self._statement() as cursor:
            cursor.execute(AUDIT.head.pyformat)
            top = cursor.fetchone()
            head = (0, GENESIS_HASH) if top is None else (int(top["seq"]), str(top["hash"]))
            cursor.execute(AUDIT.checkpoints.pyformat)
            checkpoints = [_Checkpoint.of(row) for row in cursor.fetchall()]
            trust_until = trusted_until(anchors, _stored_hashes(cursor, [a.seq for a in anchors]))
            witnesses = [*anchors, *(c.anchor for c in checkpoints if c.seq <= trust_until)]
            stored = _stored_hashes(cursor, [w.seq for w in witnesses])
        sequential = processes <= 1 or any(c.accepted_break_seq is not None for c in checkpoints)
        if not sequential and check_witnesses(witnesses, stored, head) is None:
            dsn = self.engine.url.render_as_string(hide_password=False).replace("+psycopg", "", 1)
            segments = verify_in_parallel(dsn, head[0], processes, min_rows=min_rows)
            if joined(segments, head):
                result = AuditVerification(True, sum(s.rows for s in segments), *head, anchors_checked=len(witnesses))
                if head[0] > 0:
                    with self._statement() as cursor:
                        recorded = _record_checkpoint(cursor, result, full=True, display_name=display_name)
                    result = replace(result, checkpointed=recorded)
                return result
        return self.verify_audit(anchors=anchors, record_checkpoint=True, display_name=display_name)

    def record_full_verification(
        self, result: AuditVerification, *, started_at: datetime, processes: int, display_name: str | None
    ) -> int | None:
        """Keep a full verification's result (and its audit row); None if this role may not record it."""
        params = {
            "started_at": started_at,
            "ok": result.ok,
            "rows": result.rows,
            "head_seq": result.head_seq,
            "head_hash": result.head_hash,
            "first_broken_seq": result.first_broken_seq,
            "problem": None if result.ok else (result.problem or "broken"),
            "processes": processes,
            "anchors": result.anchors_checked,
            "display_name": display_name,
        }
        try:
            with self._statement() as cursor:
                cursor.execute(AUDIT.record_verification.pyformat, params)
                row = cursor.fetchone()
        except psycopg.errors.InsufficientPrivilege:
            return None
        return None if row is None else int(row["id"])

    def money_stop(self) -> str | None:
        """Why no money may move: a failed full verification no re-anchoring followed (None: none)."""
        with self._read() as conn:
            row = conn.execute(AUDIT.failed_full_verification.text).first()
        if row is None:
            return None
        when = row.finished_at.isoformat(timespec="seconds")
        return (
            f"the full verification of {when} by {row.verified_by} found the chain broken at seq"
            f" {row.first_broken_seq}: {row.problem}; no money moves until an operator re-anchors after an"
            " investigation (batch audit reanchor --reason ...)"
        )

    def reanchor(self, *, broken_seq: int, problem: str, reason: str, display_name: str | None) -> Anchor:
        """Accept the first broken row after an investigation (a person only); the checkpoint it records."""
        params = {"broken_seq": broken_seq, "problem": problem, "reason": require_reason(reason)}
        try:
            with self._statement() as cursor:
                cursor.execute(AUDIT.reanchor.pyformat, params | {"display_name": display_name})
                row = cursor.fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise OperatorRefusedError(f"{exc}: only members of batch_operator may re-anchor the chain") from exc
        assert row is not None
        return _Checkpoint.of(row).anchor

    def audit_head(self) -> tuple[int, str]:
        with self._read() as conn:
            row = conn.execute(AUDIT.head.text).first()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))

    def last_finished_run(self) -> uuid.UUID | None:
        """The run that finished last (what an anchor names)."""
        with self._read() as conn:
            value = conn.execute(AUDIT.last_finished_run.text).scalar()
        return value if isinstance(value, uuid.UUID) else None


class _Stored(NamedTuple):
    hash: str
    prev_hash: str
    hash_version: int


def _hashes(cursor: psycopg.Cursor[dict[str, Any]], seqs: Sequence[int]) -> dict[int, _Stored]:
    """The hash, prev_hash and hash version each of these seqs carries now (absent: no such row)."""
    if not seqs:
        return {}
    cursor.execute(AUDIT.hashes_at.pyformat, {"seqs": sorted(set(seqs))})
    return {
        int(r["seq"]): _Stored(str(r["hash"]), str(r["prev_hash"]), int(r["hash_version"])) for r in cursor.fetchall()
    }


def _stored_hashes(cursor: psycopg.Cursor[dict[str, Any]], seqs: Sequence[int]) -> dict[int, str]:
    """The hash each of these seqs carries now (one read for all of them)."""
    return {seq: found.hash for seq, found in _hashes(cursor, seqs).items()}


def _record_checkpoint(
    cursor: psycopg.Cursor[dict[str, Any]], result: AuditVerification, *, full: bool, display_name: str | None
) -> bool:
    """Record a verified head; False when a later checkpoint exists or this role may not record one."""
    try:
        cursor.execute(
            AUDIT.record_checkpoint.pyformat,
            {
                "seq": result.head_seq,
                "hash": result.head_hash,
                "from_seq": max(result.from_seq - 1, 0),  # the checkpoint row itself was recomputed too
                "rows": result.rows,
                "full_chain": full,
                "display_name": display_name,
            },
        )
    except psycopg.errors.InsufficientPrivilege:
        return False  # e.g. an auditor's read-only role: the verification stands, only no checkpoint is kept
    row = cursor.fetchone()
    return bool(row and row["audit_checkpoint"])
