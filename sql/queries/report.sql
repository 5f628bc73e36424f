-- Run reports: the runs covered, one line per candidate portfolio, one line per payout a run moved that
-- another run decided, and the journal's own aggregates (independent of the report's bucketing).

-- name: run_by_id
SELECT * FROM batch.runs WHERE id = :id

-- name: runs_of_date
SELECT * FROM batch.runs WHERE business_date = :d AND (dry_run = false OR :dry) ORDER BY started_at

-- name: candidate_lines_of_run
-- every decision of the run, with its payout and whether it is a hold unchanged since the previous run
SELECT d.id AS decision_id, d.run_id, d.portfolio_id, d.decision, d.reason, d.final_decision, d.final_reason,
       d.currency, d.requested_raw, d.requested_amount, d.ledger_available, d.investsuite_cash, d.pay_amount,
       d.reconciliation_break, d.details, d.dry_run,
       p.id AS payout_id, p.state, p.amount, p.ledger_reference, p.transaction_id, p.failing_step, p.last_error,
       p.updated_at, p.stopped_at, p.hold_reason, p.approved_at, p.approved_by, p.approval_reason, p.retried_at,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at,
       batch.still_held(d) AS still_held, NULL::jsonb AS earlier, false AS movement,
       EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p.id AND a.run_id = d.run_id AND a.step = 'LEDGER_POST'
                  AND a.outcome IN ('OK', 'ADOPTED')) AS moved
  FROM batch.decisions d LEFT JOIN batch.payouts p ON p.id = d.payout_id
 WHERE d.run_id = :run_id AND d.flow = 'WITHDRAWAL'
 ORDER BY d.portfolio_id COLLATE "C"

-- name: candidate_lines_of_date
-- each portfolio once (batch.decision_ranks), its earlier decisions of the date beneath it
WITH ranks AS (SELECT * FROM batch.decision_ranks(CAST(:runs AS uuid[]))),
earlier AS (
    SELECT k.portfolio_id,
           jsonb_agg(jsonb_build_object('run_id', e.run_id, 'decision', coalesce(e.final_decision, e.decision),
                                        'reason', coalesce(e.final_reason, e.reason),
                                        'requested', e.requested_amount, 'payout_id', e.payout_id,
                                        'decided_at', e.created_at) ORDER BY e.id) AS list
      FROM ranks k JOIN batch.decisions e ON e.id = k.decision_id
     WHERE k.rank > 1
     GROUP BY k.portfolio_id)
SELECT d.id AS decision_id, d.run_id, d.portfolio_id, d.decision, d.reason, d.final_decision, d.final_reason,
       d.currency, d.requested_raw, d.requested_amount, d.ledger_available, d.investsuite_cash, d.pay_amount,
       d.reconciliation_break, d.details, d.dry_run,
       p.id AS payout_id, p.state, p.amount, p.ledger_reference, p.transaction_id, p.failing_step, p.last_error,
       p.updated_at, p.stopped_at, p.hold_reason, p.approved_at, p.approved_by, p.approval_reason, p.retried_at,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at,
       batch.still_held(d) AS still_held, e.list AS earlier, false AS movement,
       EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p.id AND a.run_id = ANY(CAST(:runs AS uuid[])) AND a.step = 'LEDGER_POST'
                  AND a.outcome IN ('OK', 'ADOPTED')) AS moved
  FROM ranks k
  JOIN batch.decisions d ON d.id = k.decision_id
  LEFT JOIN batch.payouts p ON p.id = d.payout_id
  LEFT JOIN earlier e ON e.portfolio_id = k.portfolio_id
 WHERE k.rank = 1
 ORDER BY d.portfolio_id COLLATE "C"

-- name: movement_lines
-- payouts the runs drove (a step attempt) that were decided by another run: carried over, approved, retried
SELECT d.id AS decision_id, d.run_id, d.portfolio_id, d.decision, d.reason, d.final_decision, d.final_reason,
       p.currency, d.requested_raw, p.amount AS requested_amount, d.ledger_available, d.investsuite_cash,
       d.pay_amount, d.reconciliation_break, d.details, d.dry_run,
       p.id AS payout_id, p.state, p.amount, p.ledger_reference, p.transaction_id, p.failing_step, p.last_error,
       p.updated_at, p.stopped_at, p.hold_reason, p.approved_at, p.approved_by, p.approval_reason, p.retried_at,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at,
       false AS still_held, NULL::jsonb AS earlier, true AS movement,
       EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p.id AND a.run_id = ANY(CAST(:runs AS uuid[])) AND a.step = 'LEDGER_POST'
                  AND a.outcome IN ('OK', 'ADOPTED')) AS moved
  FROM batch.payouts p
  JOIN batch.decisions d ON d.id = p.decision_id
 WHERE p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = ANY(CAST(:runs AS uuid[])))
   AND NOT (p.run_id = ANY(CAST(:runs AS uuid[])))
   AND p.flow = 'WITHDRAWAL'
 ORDER BY d.portfolio_id COLLATE "C", p.created_at

-- name: earlier_payout_lines_of_date
-- the date's money beyond one decision per portfolio: every payout of the value date whose money moved
-- (from any run of the date: killed, interrupted, operator, listener) that is not the payout of the
-- portfolio's counted decision, e.g. the first payout of a portfolio whose customer asked again
WITH counted AS (
    SELECT d.payout_id FROM batch.decision_ranks(CAST(:runs AS uuid[])) k JOIN batch.decisions d ON d.id = k.decision_id
     WHERE k.rank = 1 AND d.payout_id IS NOT NULL)
SELECT d.id AS decision_id, d.run_id, d.portfolio_id, d.decision, d.reason, d.final_decision, d.final_reason,
       p.currency, d.requested_raw, p.amount AS requested_amount, d.ledger_available, d.investsuite_cash,
       d.pay_amount, d.reconciliation_break, d.details, d.dry_run,
       p.id AS payout_id, p.state, p.amount, p.ledger_reference, p.transaction_id, p.failing_step, p.last_error,
       p.updated_at, p.stopped_at, p.hold_reason, p.approved_at, p.approved_by, p.approval_reason, p.retried_at,
       p.ledger_posted_at, p.ledger_moved_at, p.transaction_recorded_at, p.divest_cleared_at, p.holdings_updated_at,
       p.event_sent_at, p.completed_at,
       false AS still_held, NULL::jsonb AS earlier, false AS movement, 'paid_earlier' AS line_group,
       EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p.id AND a.run_id = ANY(CAST(:runs AS uuid[])) AND a.step = 'LEDGER_POST'
                  AND a.outcome IN ('OK', 'ADOPTED')) AS moved
  FROM batch.payouts p
  JOIN batch.decisions d ON d.id = p.decision_id
 WHERE p.business_date = :d AND p.flow = 'WITHDRAWAL' AND p.ledger_posted_at IS NOT NULL
   AND p.run_id = ANY(CAST(:runs AS uuid[]))
   AND p.id NOT IN (SELECT payout_id FROM counted)
 ORDER BY d.portfolio_id COLLATE "C", p.created_at

-- name: earlier_payout_totals_of_date
WITH counted AS (
    SELECT d.payout_id FROM batch.decision_ranks(CAST(:runs AS uuid[])) k JOIN batch.decisions d ON d.id = k.decision_id
     WHERE k.rank = 1 AND d.payout_id IS NOT NULL)
SELECT p.currency AS ccy, coalesce(sum(p.amount), 0) AS requested, count(*) AS n
  FROM batch.payouts p
 WHERE p.business_date = :d AND p.flow = 'WITHDRAWAL' AND p.ledger_posted_at IS NOT NULL
   AND p.run_id = ANY(CAST(:runs AS uuid[]))
   AND p.id NOT IN (SELECT payout_id FROM counted)
 GROUP BY 1

-- name: candidate_totals_of_run
SELECT coalesce(currency, '???') AS ccy, coalesce(sum(requested_amount), 0) AS requested, count(*) AS n
  FROM batch.decisions WHERE run_id = :run_id AND flow = 'WITHDRAWAL' GROUP BY 1

-- name: candidate_totals_of_date
-- portfolios are counted once: the candidates are the distinct portfolios of the date's decisions
SELECT coalesce(d.currency, '???') AS ccy, coalesce(sum(d.requested_amount), 0) AS requested,
       count(DISTINCT d.portfolio_id) AS n
  FROM batch.decision_ranks(CAST(:runs AS uuid[])) k JOIN batch.decisions d ON d.id = k.decision_id
 WHERE k.rank = 1
 GROUP BY 1

-- name: movement_totals
SELECT p.currency AS ccy, coalesce(sum(p.amount), 0) AS requested, count(*) AS n
  FROM batch.payouts p
 WHERE p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = ANY(CAST(:runs AS uuid[])))
   AND NOT (p.run_id = ANY(CAST(:runs AS uuid[])))
   AND p.flow = 'WITHDRAWAL'
 GROUP BY 1

-- name: audit_hash_at
-- the hash of one audit row (the head a run stored must still be in the chain, with the same hash)
SELECT hash FROM batch.audit_log WHERE seq = :seq

-- name: deposit_lines
-- every decision of the runs about a ledger transfer of these flows (deposits: the incoming credits, decisions
-- of flow DEPOSIT; withdrawal announcements: the bank's payouts), a transfer counted once: its latest decision
-- among them, with its operation; plus the operations of :operation_flows the runs drove that another run
-- decided (carried over)
WITH latest AS (
    SELECT DISTINCT ON (d.credit_reference) d.*
      FROM batch.decisions d
     WHERE d.run_id = ANY(CAST(:runs AS uuid[])) AND d.flow = ANY(CAST(:decision_flows AS text[]))
     ORDER BY d.credit_reference, d.id DESC)
SELECT d.credit_reference, d.portfolio_id, coalesce(d.final_decision, d.decision) AS decision,
       coalesce(d.final_reason, d.reason) AS reason, d.currency, d.requested_amount AS amount, d.details,
       p.id AS operation_id, p.flow, p.state, p.ledger_reference, p.failing_step, p.last_error,
       batch.still_held(d) AS still_held, false AS carried_over
  FROM latest d LEFT JOIN batch.payouts p ON p.id = d.payout_id
UNION ALL
SELECT p.credit_reference, p.portfolio_id, coalesce(d.final_decision, 'PAY'), coalesce(d.final_reason, d.reason),
       p.currency, p.amount, d.details,
       p.id, p.flow, p.state, p.ledger_reference, p.failing_step, p.last_error, false, true
  FROM batch.payouts p JOIN batch.decisions d ON d.id = p.decision_id
 WHERE p.flow = ANY(CAST(:operation_flows AS text[]))
   AND p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = ANY(CAST(:runs AS uuid[])))
   AND NOT (p.run_id = ANY(CAST(:runs AS uuid[])))
   -- a credit counted once: a stopped operation whose credit the runs decided again is that decision's line
   AND NOT EXISTS (SELECT 1 FROM batch.decisions e
                    WHERE e.run_id = ANY(CAST(:runs AS uuid[])) AND e.credit_reference = p.credit_reference)
ORDER BY 1
