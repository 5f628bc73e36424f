"""The job's journal in PostgreSQL: runs, decisions, payouts, step attempts and the audit log.

Split by concern, each store with its SQL in ``sql/queries/journal_<concern>.sql``:

    runs.py        the run lock, the run lifecycle
    decisions.py   one decision per candidate per run, and the payouts they create
    payouts.py     claims with a lease, step intents and outcomes, stops
    oversight.py   who acts (as the database says), operators' approve / retry / cancel, four-eyes policy
    audit.py       the hash chain's verification (incremental from checkpoints, anchors), its head
    reconciliations.py  the payouts a reconciliation checks, and its recorded result
    listings.py    operators' paged listings (payouts, held decisions, runs), the first business date
    base.py        transactions, one-statement calls, audit rows

``Journal`` is all of them on one engine: what the service layer is given.
"""

from __future__ import annotations

from batch.adapters.journal.audit import AuditStore
from batch.adapters.journal.base import LOST_RACE
from batch.adapters.journal.decisions import DecisionStore
from batch.adapters.journal.listings import ListingStore
from batch.adapters.journal.oversight import OversightStore
from batch.adapters.journal.payouts import PayoutStore
from batch.adapters.journal.reconciliations import ReconciliationStore
from batch.adapters.journal.runs import RUN_LOCK_KEY, RunStore
from batch.codec import canonical as canonical_json
from batch.domain.audit import GENESIS_HASH, Anchor, AuditVerification
from batch.domain.oversight import Identity, OperatorOutcome
from batch.domain.records import DecisionRow, NewPayout, PayoutRecord

__all__ = [
    "GENESIS_HASH",
    "LOST_RACE",
    "RUN_LOCK_KEY",
    "Anchor",
    "AuditVerification",
    "DecisionRow",
    "Identity",
    "Journal",
    "NewPayout",
    "OperatorOutcome",
    "PayoutRecord",
    "canonical_json",
]


class Journal(RunStore, DecisionStore, PayoutStore, OversightStore, AuditStore, ReconciliationStore, ListingStore):
    """All reads and writes of the job's journal go through here."""
