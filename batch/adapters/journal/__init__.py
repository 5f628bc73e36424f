"""The job's journal in PostgreSQL: runs, decisions, payouts, step attempts and the audit log.

Split by concern, each store with its SQL in ``sql/queries/journal_<concern>.sql``:

    runs.py        the run lock, the run lifecycle
    decisions.py   one decision per candidate per run, and the payouts they create
    payouts.py     claims with a lease, step intents and outcomes, stops, operator actions
    audit.py       the hash chain's verification and head
    reconciliations.py  the payouts a reconciliation checks, and its recorded result
    base.py        transactions, one-statement calls, audit rows

``Journal`` is all of them on one engine: what the service layer is given.
"""

from __future__ import annotations

from batch.adapters.journal.audit import GENESIS_HASH, AuditStore, audit_hash
from batch.adapters.journal.base import LOST_RACE
from batch.adapters.journal.decisions import DecisionStore
from batch.adapters.journal.payouts import PayoutStore
from batch.adapters.journal.reconciliations import ReconciliationStore
from batch.adapters.journal.runs import RUN_LOCK_KEY, RunStore
from batch.codec import canonical as canonical_json
from batch.domain.records import AuditVerification, DecisionRow, NewPayout, PayoutRecord

__all__ = [
    "GENESIS_HASH",
    "LOST_RACE",
    "RUN_LOCK_KEY",
    "AuditVerification",
    "DecisionRow",
    "Journal",
    "NewPayout",
    "PayoutRecord",
    "audit_hash",
    "canonical_json",
]


class Journal(RunStore, DecisionStore, PayoutStore, AuditStore, ReconciliationStore):
    """All reads and writes of the job's journal go through here."""
