-- One business date, one truth (issue 21).
--
-- 1. INTERRUPTED: a run stopped by a signal (SIGTERM/SIGINT) says so; it is neither ABANDONED (found
--    dead by a later run) nor FAILED (an error). When and what was in flight are in its summary
--    (``summary.interrupted``) and its ``error`` text; finished_at is when it stopped.
ALTER TABLE batch.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE batch.runs ADD CONSTRAINT runs_status_check CHECK (status IN ('RUNNING', 'SUCCEEDED',
    'SUCCEEDED_WITH_EXCEPTIONS', 'FAILED', 'ABANDONED', 'INTERRUPTED'));

-- 2. An unchanged hold alerts once: "still held" compares with the last *completed nightly* run of the
--    business date or before (SUCCEEDED or SUCCEEDED_WITH_EXCEPTIONS; not a failed, refused, abandoned,
--    interrupted, dry, listener or scale-out worker run), among those that covered the portfolio.
CREATE OR REPLACE FUNCTION batch.still_held(d batch.decisions) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT d.decision = 'HOLD' AND d.reason <> 'PAYOUT_NEEDS_ATTENTION' AND coalesce((
        SELECT pd.decision = 'HOLD' AND batch.hold_kind(pd) = batch.hold_kind(d)
               AND pd.requested_amount IS NOT DISTINCT FROM d.requested_amount
               AND pd.requested_raw IS NOT DISTINCT FROM d.requested_raw
          FROM batch.runs cur
          CROSS JOIN LATERAL (
                SELECT r.id FROM batch.runs r
                 WHERE r.dry_run = false AND r.started_at < cur.started_at
                   AND r.business_date <= cur.business_date
                   AND r.status IN ('SUCCEEDED', 'SUCCEEDED_WITH_EXCEPTIONS')
                   AND r.trigger <> 'listener'
                   AND r.parameters ->> 'role' IS DISTINCT FROM 'worker'
                   AND (jsonb_array_length(coalesce(r.parameters -> 'portfolio_ids', '[]'::jsonb)) = 0
                        OR r.parameters -> 'portfolio_ids' ? d.portfolio_id)
                 ORDER BY r.started_at DESC LIMIT 1) prev
          JOIN batch.decisions pd ON pd.run_id = prev.id AND pd.flow = d.flow
               AND CASE WHEN d.flow = 'WITHDRAWAL' THEN pd.portfolio_id = d.portfolio_id
                        ELSE pd.credit_reference = d.credit_reference END
         WHERE cur.id = d.run_id), false)
$$;
