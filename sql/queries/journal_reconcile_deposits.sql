-- Reconciliation of deposits (batch/service/reconcile/deposits.py): the deposit operations in scope, and the
-- operations behind the ledger's deposit transfers. Read-only.

-- name: deposits_of_date
-- every deposit operation of the business date (the value date of its ledger move)
SELECT p.id, p.flow, p.state, p.portfolio_id, p.credit_reference, p.currency, p.amount, p.ledger_account,
       p.ledger_reference, p.business_date, p.ledger_moved_at, p.event_sent_at, p.completed_at, p.last_error
  FROM batch.payouts p
 WHERE p.flow IN ('DEPOSIT', 'DEPOSIT_ANNOUNCE') AND p.business_date = :business_date
 ORDER BY p.created_at, p.id

-- name: deposits_of_run
-- the deposit operations a run created or drove (a step attempt of the run), whatever their date
SELECT p.id, p.flow, p.state, p.portfolio_id, p.credit_reference, p.currency, p.amount, p.ledger_account,
       p.ledger_reference, p.business_date, p.ledger_moved_at, p.event_sent_at, p.completed_at, p.last_error
  FROM batch.payouts p
 WHERE p.flow IN ('DEPOSIT', 'DEPOSIT_ANNOUNCE')
   AND (p.run_id = :run_id OR p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = :run_id))
 ORDER BY p.created_at, p.id

-- name: operations_of_credits
-- the client-side deposit operations of these credits (whose ledger transfers they may explain)
SELECT credit_reference, state, ledger_reference FROM batch.payouts
 WHERE flow = 'DEPOSIT' AND credit_reference = ANY(:references)
