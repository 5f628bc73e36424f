-- Reconciliation: the payouts to check (with the evidence the journal kept), and the recorded results.

-- name: payouts_of_date
-- every payout of the business date (its ledger value date), with the event id InvestSuite answered
SELECT p.id, p.portfolio_id, p.business_date, p.state, p.currency, p.amount, p.ledger_reference, p.transaction_id,
       p.divest_snapshot, p.divest_target, p.holdings_target_cash,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at, p.event_status,
       (SELECT a.detail ->> 'event_id' FROM batch.step_attempts a
         WHERE a.payout_id = p.id AND a.step = 'SEND_EVENT' AND a.outcome = 'OK'
         ORDER BY a.id DESC LIMIT 1) AS event_id,
       -- what moved the portfolio's cash after this payout, by the job itself (issue 26): the deposits
       -- announced after its holdings update raise the cash above its target; a later payout of the same
       -- portfolio takes over its divest amount
       coalesce((SELECT sum(o.amount) FROM batch.payouts o
                  WHERE o.flow IN ('DEPOSIT', 'DEPOSIT_ANNOUNCE') AND o.portfolio_id = p.portfolio_id AND o.currency = p.currency
                    AND o.event_sent_at > p.holdings_updated_at), 0) AS later_credits,
       EXISTS (SELECT 1 FROM batch.payouts o
                WHERE o.flow = 'WITHDRAWAL' AND o.portfolio_id = p.portfolio_id AND o.id <> p.id
                  AND o.created_at > p.created_at AND o.ledger_posted_at IS NOT NULL) AS later_payout,
       false AS moved_in_run
  FROM batch.payouts p
 WHERE p.business_date = :business_date AND p.flow = 'WITHDRAWAL'
 ORDER BY p.created_at, p.id

-- name: payouts_of_run
-- a finished run reconciles its whole business date (every payout of the date, from any run: killed,
-- interrupted, operator, listener) plus the payouts it created or drove of other dates (a step attempt
-- of the run); moved_in_run: the run posted it on the ledger itself
SELECT p.id, p.portfolio_id, p.business_date, p.state, p.currency, p.amount, p.ledger_reference, p.transaction_id,
       p.divest_snapshot, p.divest_target, p.holdings_target_cash,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at, p.event_status,
       (SELECT a.detail ->> 'event_id' FROM batch.step_attempts a
         WHERE a.payout_id = p.id AND a.step = 'SEND_EVENT' AND a.outcome = 'OK'
         ORDER BY a.id DESC LIMIT 1) AS event_id,
       -- what moved the portfolio's cash after this payout, by the job itself (issue 26): the deposits
       -- announced after its holdings update raise the cash above its target; a later payout of the same
       -- portfolio takes over its divest amount
       coalesce((SELECT sum(o.amount) FROM batch.payouts o
                  WHERE o.flow IN ('DEPOSIT', 'DEPOSIT_ANNOUNCE') AND o.portfolio_id = p.portfolio_id AND o.currency = p.currency
                    AND o.event_sent_at > p.holdings_updated_at), 0) AS later_credits,
       EXISTS (SELECT 1 FROM batch.payouts o
                WHERE o.flow = 'WITHDRAWAL' AND o.portfolio_id = p.portfolio_id AND o.id <> p.id
                  AND o.created_at > p.created_at AND o.ledger_posted_at IS NOT NULL) AS later_payout,
       EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p.id AND a.run_id = :run_id AND a.step = 'LEDGER_POST'
                  AND a.outcome IN ('OK', 'ADOPTED')) AS moved_in_run
  FROM batch.payouts p
 WHERE p.flow = 'WITHDRAWAL'
   AND (p.business_date = :business_date OR p.run_id = :run_id
        OR p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = :run_id))
 ORDER BY p.created_at, p.id

-- name: known_payouts
-- which of these ids are payouts of the journal (a ledger payout whose key is none of them is unknown)
SELECT id FROM batch.payouts WHERE id = ANY(CAST(:ids AS uuid[]))

-- name: insert
INSERT INTO batch.reconciliations (id, kind, business_date, run_id, operator, started_at, checked, breaks, figures,
                                   break_list)
VALUES (:id, :kind, :business_date, :run_id, :operator, :started_at, :checked, :breaks, CAST(:figures AS jsonb),
        CAST(:break_list AS jsonb))
RETURNING finished_at

-- name: latest_of_run
SELECT * FROM batch.reconciliations WHERE run_id = :run_id ORDER BY finished_at DESC LIMIT 1

-- name: latest_of_date
-- the latest reconciliation of the whole business date: `batch reconcile --date`, or a run's own made since
-- runs reconcile their whole date (figures.stats.scope = 'date'; older runs' covered their payouts only)
SELECT * FROM batch.reconciliations
 WHERE kind = 'payouts' AND business_date = :business_date
   AND (run_id IS NULL OR figures -> 'stats' ->> 'scope' = 'date')
 ORDER BY finished_at DESC LIMIT 1

-- name: latest_movement_of_date
-- when money last moved for the value date by the report's cut-off (any step of any withdrawal of the date):
-- a reconciliation finished before it cannot vouch for the date's figures
SELECT max(v.stamp)
  FROM batch.payouts p
 CROSS JOIN LATERAL (VALUES (p.ledger_posted_at), (p.transaction_recorded_at), (p.divest_cleared_at),
                            (p.holdings_updated_at), (p.event_sent_at), (p.completed_at)) AS v(stamp)
 WHERE p.business_date = :business_date AND p.flow = 'WITHDRAWAL' AND v.stamp <= :as_of

-- name: announcement_status
-- withdrawals announced for the bank (flow WITHDRAWAL_ANNOUNCE): for each of these ledger payout references, its
-- latest non dry decision and its live operation (none when never decided, or held)
SELECT r.ref AS credit_reference, d.decision, d.reason, p.id AS operation_id, p.state, p.amount, p.currency,
       p.event_status,
       (SELECT a.detail ->> 'event_id' FROM batch.step_attempts a
         WHERE a.payout_id = p.id AND a.step = 'SEND_EVENT' AND a.outcome IN ('OK', 'ADOPTED')
         ORDER BY a.id DESC LIMIT 1) AS event_id
  FROM unnest(CAST(:references AS text[])) AS r(ref)
  LEFT JOIN LATERAL (
        SELECT coalesce(x.final_decision, x.decision) AS decision, coalesce(x.final_reason, x.reason) AS reason
          FROM batch.decisions x
         WHERE x.credit_reference = r.ref AND x.flow = 'WITHDRAWAL_ANNOUNCE' AND NOT x.dry_run
         ORDER BY x.id DESC LIMIT 1) d ON true
  LEFT JOIN LATERAL (
        SELECT * FROM batch.payouts y
         WHERE y.credit_reference = r.ref AND y.flow = 'WITHDRAWAL_ANNOUNCE' AND y.state <> 'CANCELLED'
         LIMIT 1) p ON true

-- name: announcements_of_date
-- the live announcement operations a run of this business date created (their ledger payouts must exist)
SELECT p.id, p.credit_reference, p.portfolio_id, p.amount, p.currency, p.state
  FROM batch.payouts p
 WHERE p.flow = 'WITHDRAWAL_ANNOUNCE' AND p.business_date = :business_date AND p.state <> 'CANCELLED'
 ORDER BY p.id
