-- Operators' listings (``batch payouts``, ``batch runs``), paged by limit and offset with the total beside
-- each page, and the run window's lower bound (``batch run --date``).

-- name: payouts_page
SELECT * FROM batch.payouts WHERE state = ANY(:states) AND flow = ANY(:flows)
 ORDER BY created_at, id LIMIT :n OFFSET :offset

-- name: payouts_count
SELECT count(*) FROM batch.payouts WHERE state = ANY(:states) AND flow = ANY(:flows)

-- name: held_without_payout
-- the latest withdrawal decision of each portfolio since the start of the last non-dry run that planned every
-- pending portfolio (a later decision, of a --portfolio run or a listener, wins), when it is a HOLD that created
-- no payout. A HOLD waiting for a HELD payout's approval (AWAITING_APPROVAL) is that payout, which the payout
-- listing shows already. Paged and counted by the adapter (one selection, so the total matches the pages).
WITH last_full AS (
    SELECT coalesce(max(started_at), '-infinity'::timestamptz) AS since
      FROM batch.runs
     WHERE dry_run = false AND planned_at IS NOT NULL
       AND coalesce(parameters ->> 'role', 'planner') = 'planner'
       AND jsonb_array_length(coalesce(parameters -> 'portfolio_ids', '[]'::jsonb)) = 0
       AND coalesce(parameters -> 'flows', '["WITHDRAWAL"]'::jsonb) ? 'WITHDRAWAL'
), recent AS (
    -- the runs that ended after that moment or still go on (a listener's long-lived run included)
    SELECT id FROM batch.runs
     WHERE dry_run = false AND coalesce(finished_at, 'infinity'::timestamptz) >= (SELECT since FROM last_full)
), latest AS (
    SELECT DISTINCT ON (d.portfolio_id)
           d.portfolio_id, coalesce(d.final_decision, d.decision) AS decision,
           coalesce(d.final_reason, d.reason) AS reason, d.payout_id, d.currency, d.requested_amount,
           d.requested_raw, d.run_id, d.business_date, d.created_at
      FROM batch.decisions d
     WHERE d.run_id IN (SELECT id FROM recent) AND d.flow = 'WITHDRAWAL'
       AND d.created_at >= (SELECT since FROM last_full)
     ORDER BY d.portfolio_id, d.created_at DESC, d.id DESC
)
SELECT portfolio_id, reason, currency, requested_amount, requested_raw, run_id, business_date, created_at
  FROM latest
 WHERE decision = 'HOLD' AND payout_id IS NULL AND reason <> 'AWAITING_APPROVAL'

-- name: runs_page
-- newest first; one business date when :d is given
SELECT id, business_date, trigger, operator, status, exit_code, dry_run, started_at, finished_at, summary
  FROM batch.runs
 WHERE (CAST(:d AS date) IS NULL OR business_date = CAST(:d AS date))
 ORDER BY started_at DESC, id
 LIMIT :n OFFSET :offset

-- name: runs_count
SELECT count(*) FROM batch.runs WHERE (CAST(:d AS date) IS NULL OR business_date = CAST(:d AS date))

-- name: first_business_date
-- the earliest business date a (non-dry) run was started for: ``batch run --date`` is not earlier
-- without a backfill reason
SELECT min(business_date) FROM batch.runs WHERE dry_run = false AND parameters ->> 'role' IS DISTINCT FROM 'worker'
