"""The journal's audit log: verify the hash chain (from the last checkpoint, or whole), record checkpoints.

The chain itself is built by the database (``batch.audit_chain`` trigger, migrations 0001 and 0005); the
verification recomputes every hash here (``batch.domain.audit``), a page of rows at a time (memory flat
in the chain's length), and checks that the chain still passes through every witness: the anchors and
``--expect`` heads the caller gives, and the journal's own verified checkpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import args_row

from batch.adapters.journal.base import AUDIT, JournalBase
from batch.domain.audit import (
    GENESIS_HASH,
    Anchor,
    AuditRow,
    AuditVerification,
    ChainWalk,
    check_witnesses,
    verification,
)

#: rows per page of the chain walk
PAGE_ROWS = 10_000


def _checkpoint(row: dict[str, Any]) -> Anchor:
    at = row["verified_at"].isoformat(timespec="seconds")
    return Anchor(int(row["seq"]), str(row["hash"]), f"the checkpoint of {at} by {row['verified_by']}")


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
        carries the checkpoint's hash (else the whole chain, every checkpoint a witness). ``record_checkpoint``: when
        the chain verifies, record its head as a new checkpoint (stamped by the database with who and when).
        """
        with self._statement() as cursor:
            cursor.execute(AUDIT.head.pyformat)
            top = cursor.fetchone()
            head = (0, GENESIS_HASH) if top is None else (int(top["seq"]), str(top["hash"]))
            witnesses, from_seq, start = list(anchors), 0, (0, GENESIS_HASH, 1)
            if since_checkpoint:
                cursor.execute(AUDIT.latest_checkpoint.pyformat)
                latest = cursor.fetchone()
                if latest is not None:
                    checkpoint = _checkpoint(latest)
                    carried = _hashes(cursor, [checkpoint.seq]).get(checkpoint.seq)
                    if carried is not None and carried.hash == checkpoint.hash:
                        # the walk starts at the checkpoint row itself: its content must still give its hash
                        witnesses.append(checkpoint)
                        from_seq = checkpoint.seq
                        start = (checkpoint.seq - 1, carried.prev_hash, carried.hash_version)
            if from_seq == 0:  # the whole chain: every checkpoint is a witness too
                cursor.execute(AUDIT.checkpoints.pyformat)
                witnesses += [_checkpoint(row) for row in cursor.fetchall()]
            walk = ChainWalk(*start)
            _walk(cursor.connection, walk, after=start[0], until=head[0], batch_size=batch_size)
            stored = {seq: found.hash for seq, found in _hashes(cursor, [w.seq for w in witnesses]).items()}
            result = verification(
                walk, check_witnesses(witnesses, stored, head), from_seq=from_seq, anchors_checked=len(witnesses)
            )
            if result.ok and record_checkpoint and result.head_seq > from_seq:
                recorded = _record_checkpoint(cursor, result, full=from_seq == 0, display_name=display_name)
                result = replace(result, checkpointed=recorded)
        return result

    def audit_head(self) -> tuple[int, str]:
        with self._read() as conn:
            row = conn.execute(AUDIT.head.text).first()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))

    def last_finished_run(self) -> uuid.UUID | None:
        """The run that finished last (what an anchor names)."""
        with self._read() as conn:
            value = conn.execute(AUDIT.last_finished_run.text).scalar()
        return value if isinstance(value, uuid.UUID) else None


def _walk(conn: psycopg.Connection[Any], walk: ChainWalk, *, after: int, until: int, batch_size: int) -> None:
    """Feed the rows after ``after`` up to ``until`` to the walk, a page at a time, until it breaks."""
    with conn.cursor(row_factory=args_row(AuditRow)) as rows:
        while after < until:
            rows.execute(AUDIT.chain_between.pyformat, {"after": after, "until": until, "n": batch_size})
            page = rows.fetchall()
            if not page:
                break
            for row in page:
                if not walk.feed(row):
                    return
            after = page[-1].seq


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
