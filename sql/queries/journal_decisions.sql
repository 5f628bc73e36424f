-- Decisions: one per candidate portfolio per run, with the payouts they create.

-- name: open_payouts_of
-- portfolios (of these) that already have an open payout, with its id and state
SELECT portfolio_id, id, state FROM batch.payouts
 WHERE portfolio_id = ANY(:ids) AND state NOT IN ('COMPLETED', 'CANCELLED')

-- name: decided_in_run
SELECT portfolio_id FROM batch.decisions WHERE run_id = :run_id AND portfolio_id = ANY(:ids)

-- name: next_ids
SELECT nextval('batch.decisions_id_seq') FROM generate_series(1, :n)

-- name: insert
INSERT INTO batch.decisions (id, run_id, business_date, portfolio_id, decision, reason, currency, requested_raw,
                             requested_amount, full_withdrawal, ledger_account, ledger_available, investsuite_cash,
                             pay_amount, reconciliation_break, payout_id, dry_run, details)
VALUES (:id, :run_id, :business_date, :portfolio_id, :decision, :reason, :currency, :requested_raw,
        :requested_amount, :full_withdrawal, :ledger_account, :ledger_available, :investsuite_cash,
        :pay_amount, :reconciliation_break, :payout_id, :dry_run, CAST(:details AS jsonb))

-- name: insert_payout
INSERT INTO batch.payouts (id, portfolio_id, business_date, run_id, decision_id, state, currency, amount,
                           full_withdrawal, ledger_account, counter_account, cash_snapshot, divest_snapshot,
                           hold_reason)
VALUES (:id, :portfolio_id, :business_date, :run_id, :decision_id, :state, :currency, :amount,
        :full_withdrawal, :ledger_account, :counter_account, :cash_snapshot, :divest_snapshot, :hold_reason)

-- name: revise
-- execution revised the planner's decision (e.g. a PAY whose balance moved becomes DEFER); the note and
-- the evidence go into the decision's details for the report
UPDATE batch.decisions
   SET final_decision = :decision, final_reason = :reason,
       details = details || jsonb_strip_nulls(jsonb_build_object('execution_note', CAST(:note AS text),
                                                                  'revised_because', CAST(:evidence AS jsonb)))
 WHERE payout_id = :payout_id
