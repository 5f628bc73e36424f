-- Reconciliation against the systems of record (the core banking ledger and InvestSuite), and each
-- run's own audit chain head.
--
-- runs.audit_head_*: the chain head right after the run's ``run.finished`` row, stored in the same
-- transaction (the chain's advisory lock is held until commit, so no other row can slip in between).
-- A report of the run prints this head, not the head at rendering time.
ALTER TABLE batch.runs
    ADD COLUMN audit_head_seq  bigint CHECK (audit_head_seq IS NULL OR audit_head_seq >= 1),
    ADD COLUMN audit_head_hash char(64) CHECK (audit_head_hash IS NULL OR audit_head_hash ~ '^[0-9a-f]{64}$'),
    ADD CONSTRAINT runs_audit_head_whole CHECK ((audit_head_seq IS NULL) = (audit_head_hash IS NULL));

-- One row per reconciliation (``batch reconcile``, and the one at the end of every paying run): what
-- was compared, the figures per currency and source, and every break with its evidence. Read-only
-- towards the ledger and InvestSuite; recorded here so a report rendered later shows the same result.
CREATE TABLE batch.reconciliations (
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('payouts', 'book')),
    business_date   date,
    run_id          uuid        REFERENCES batch.runs (id),
    operator        text        NOT NULL CHECK (length(operator) > 0),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    checked         integer     NOT NULL CHECK (checked >= 0),
    breaks          integer     NOT NULL CHECK (breaks >= 0),
    figures         jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(figures) = 'object'),
    break_list      jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(break_list) = 'array'),
    CHECK (finished_at >= started_at),
    CHECK (kind = 'book' OR business_date IS NOT NULL),
    CHECK (jsonb_array_length(break_list) = breaks)
);
CREATE INDEX reconciliations_by_run ON batch.reconciliations (run_id, finished_at);

-- A run's report and reconciliation find the payouts it moved through its step attempts.
CREATE INDEX step_attempts_by_run ON batch.step_attempts (run_id, payout_id);

-- Reconciliations are facts: appended, never changed.
GRANT SELECT, INSERT ON batch.reconciliations TO batch_job;
