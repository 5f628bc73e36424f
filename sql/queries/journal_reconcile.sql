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
       false AS moved_in_run
  FROM batch.payouts p
 WHERE p.business_date = :business_date AND p.flow = 'WITHDRAWAL'
 ORDER BY p.created_at, p.id

-- name: payouts_of_run
-- the payouts a run created or drove (a step attempt of the run), whatever their date; moved_in_run:
-- the run posted it on the ledger itself
SELECT p.id, p.portfolio_id, p.business_date, p.state, p.currency, p.amount, p.ledger_reference, p.transaction_id,
       p.divest_snapshot, p.divest_target, p.holdings_target_cash,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at, p.event_status,
       (SELECT a.detail ->> 'event_id' FROM batch.step_attempts a
         WHERE a.payout_id = p.id AND a.step = 'SEND_EVENT' AND a.outcome = 'OK'
         ORDER BY a.id DESC LIMIT 1) AS event_id,
       EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p.id AND a.run_id = :run_id AND a.step = 'LEDGER_POST'
                  AND a.outcome IN ('OK', 'ADOPTED')) AS moved_in_run
  FROM batch.payouts p
 WHERE p.flow = 'WITHDRAWAL'
   AND (p.run_id = :run_id OR p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = :run_id))
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
-- the latest reconciliation of the whole business date (`batch reconcile --date`; a run's own covers its
-- payouts only)
SELECT * FROM batch.reconciliations
 WHERE kind = 'payouts' AND business_date = :business_date AND run_id IS NULL
 ORDER BY finished_at DESC LIMIT 1

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
