"""The journal's audit log: recompute the hash chain, read its head.

The chain itself is built by the database (``batch.audit_chain`` trigger, migration 0001): each row
hashes the previous row's hash and its own content; ``audit_hash`` here computes the same hash.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from batch.adapters.journal.base import AUDIT, JournalBase
from batch.domain.records import AuditVerification

GENESIS_HASH = "0" * 64


def audit_hash(
    prev_hash: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    run_id: uuid.UUID | None,
    payout_id: uuid.UUID | None,
    portfolio_id: str | None,
    details: str,
) -> str:
    """The same hash the database computes in ``batch.audit_hash`` (used to verify the chain)."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = "|".join(
        [
            prev_hash,
            str(seq),
            stamp,
            actor,
            action,
            str(run_id) if run_id else "",
            str(payout_id) if payout_id else "",
            portfolio_id or "",
            details,
        ]
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditStore(JournalBase):
    def verify_audit(self, batch_size: int = 5000) -> AuditVerification:
        """Recompute the whole hash chain in seq order; name the first row that does not verify."""
        prev, expected_seq, count, head_hash = GENESIS_HASH, 1, 0, GENESIS_HASH
        last_seq = 0
        with self._read() as conn:
            while True:
                rows = conn.execute(AUDIT.chain_after.text, {"after": last_seq, "n": batch_size}).all()
                if not rows:
                    break
                for r in rows:
                    count += 1
                    if r.seq != expected_seq:
                        return AuditVerification(
                            False,
                            count,
                            last_seq,
                            head_hash,
                            r.seq,
                            f"sequence gap: expected {expected_seq}, found {r.seq} (row deleted?)",
                        )
                    if r.prev_hash != prev:
                        return AuditVerification(
                            False, count, last_seq, head_hash, r.seq, "prev_hash does not match the previous row's hash"
                        )
                    computed = audit_hash(
                        prev, r.seq, r.at, r.actor, r.action, r.run_id, r.payout_id, r.portfolio_id, r.details
                    )
                    if computed != r.hash:
                        return AuditVerification(
                            False, count, last_seq, head_hash, r.seq, "row content does not match its hash (edited?)"
                        )
                    prev = head_hash = r.hash
                    last_seq = r.seq
                    expected_seq += 1
        return AuditVerification(True, count, last_seq, head_hash)

    def audit_head(self) -> tuple[int, str]:
        with self._read() as conn:
            row = conn.execute(AUDIT.head.text).first()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))
