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

-- The "still held" rule (a HOLD unchanged since the previous run does not raise the alarm again): a HOLD
-- decision is still held when the portfolio's decision in the previous run of the job that covered it
-- (not a dry run, not a scale-out worker, all portfolios or this one among --portfolio) was a HOLD of the
-- same kind and the same requested amount. A held payout waiting for approval (AWAITING_APPROVAL, or
-- the decision that created the HELD payout) is one kind; a payout that needs attention never is.
CREATE FUNCTION batch.hold_kind(d batch.decisions) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN d.reason = 'AWAITING_APPROVAL' OR d.payout_id IS NOT NULL THEN 'HELD_PAYOUT' ELSE d.reason END
$$;

CREATE FUNCTION batch.still_held(d batch.decisions) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT d.decision = 'HOLD' AND d.reason <> 'PAYOUT_NEEDS_ATTENTION' AND coalesce((
        SELECT pd.decision = 'HOLD' AND batch.hold_kind(pd) = batch.hold_kind(d)
               AND pd.requested_amount IS NOT DISTINCT FROM d.requested_amount
               AND pd.requested_raw IS NOT DISTINCT FROM d.requested_raw
          FROM batch.runs cur
          CROSS JOIN LATERAL (
                SELECT r.id FROM batch.runs r
                 WHERE r.dry_run = false AND r.started_at < cur.started_at
                   AND r.parameters ->> 'role' IS DISTINCT FROM 'worker'
                   AND (jsonb_array_length(coalesce(r.parameters -> 'portfolio_ids', '[]'::jsonb)) = 0
                        OR r.parameters -> 'portfolio_ids' ? d.portfolio_id)
                 ORDER BY r.started_at DESC LIMIT 1) prev
          JOIN batch.decisions pd ON pd.run_id = prev.id AND pd.portfolio_id = d.portfolio_id
         WHERE cur.id = d.run_id), false)
$$;

-- A date report counts each portfolio once: its latest decision among the given runs, where a decision
-- that only points at a payout an earlier decision of those runs created (AWAITING_APPROVAL,
-- PAYOUT_NEEDS_ATTENTION, PAYOUT_IN_PROGRESS) gives way to that earlier decision. rank 1 is counted;
-- the others are listed beneath it.
CREATE FUNCTION batch.decision_ranks(p_runs uuid[])
RETURNS TABLE (decision_id bigint, portfolio_id text, rank bigint) LANGUAGE sql STABLE AS $$
    SELECT d.id, d.portfolio_id,
           row_number() OVER (
               PARTITION BY d.portfolio_id
               ORDER BY (d.payout_id IS NULL
                         AND d.reason IN ('AWAITING_APPROVAL', 'PAYOUT_NEEDS_ATTENTION', 'PAYOUT_IN_PROGRESS')
                         AND EXISTS (SELECT 1 FROM batch.decisions e
                                      WHERE e.run_id = ANY (p_runs) AND e.portfolio_id = d.portfolio_id
                                        AND e.payout_id IS NOT NULL AND e.id < d.id)),
                        d.created_at DESC, d.id DESC)
      FROM batch.decisions d
     WHERE d.run_id = ANY (p_runs)
$$;
GRANT EXECUTE ON FUNCTION batch.hold_kind(batch.decisions), batch.still_held(batch.decisions),
    batch.decision_ranks(uuid[]) TO batch_job;
