-- Decisions: one per candidate portfolio per run, with the payouts they create.

-- name: open_payouts_of
-- portfolios (of these) that already have an open withdrawal, with its id and state
SELECT portfolio_id, id, state FROM batch.payouts
 WHERE portfolio_id = ANY(:ids) AND flow = 'WITHDRAWAL' AND state NOT IN ('COMPLETED', 'CANCELLED')

-- name: decided_in_run
-- what this run already decided: portfolios (withdrawals) and incoming credits (deposits)
SELECT CASE WHEN flow = 'WITHDRAWAL' THEN portfolio_id ELSE credit_reference END AS key
  FROM batch.decisions
 WHERE run_id = :run_id
   AND ((flow = 'WITHDRAWAL' AND portfolio_id = ANY(:ids)) OR (flow <> 'WITHDRAWAL' AND credit_reference = ANY(:ids)))

-- name: next_ids
SELECT nextval('batch.decisions_id_seq') FROM generate_series(1, :n)

-- name: insert
INSERT INTO batch.decisions (id, run_id, business_date, portfolio_id, decision, reason, currency, requested_raw,
                             requested_amount, full_withdrawal, ledger_account, ledger_available, investsuite_cash,
                             pay_amount, reconciliation_break, payout_id, dry_run, details, flow, credit_reference)
VALUES (:id, :run_id, :business_date, :portfolio_id, :decision, :reason, :currency, :requested_raw,
        :requested_amount, :full_withdrawal, :ledger_account, :ledger_available, :investsuite_cash,
        :pay_amount, :reconciliation_break, :payout_id, :dry_run, CAST(:details AS jsonb), :flow, :credit_reference)

-- name: insert_payouts
-- a page of payouts in one statement; a portfolio that meanwhile got an open payout from another planner
-- (the listener, a concurrent run) keeps that one: the conflicting row is skipped, not an error
INSERT INTO batch.payouts (id, portfolio_id, business_date, run_id, decision_id, state, currency, amount,
                           full_withdrawal, ledger_account, counter_account, cash_snapshot, divest_snapshot,
                           hold_reason, flow, credit_reference)
SELECT id, portfolio_id, business_date, run_id, decision_id, state, currency, amount, full_withdrawal,
       ledger_account, counter_account, cash_snapshot, divest_snapshot, hold_reason, flow, credit_reference
  FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
       id uuid, portfolio_id text, business_date date, run_id uuid, decision_id bigint, state text,
       currency text, amount numeric, full_withdrawal boolean, ledger_account text, counter_account text,
       cash_snapshot numeric, divest_snapshot text, hold_reason text, flow text, credit_reference text)
ON CONFLICT DO NOTHING
RETURNING id

-- name: lost_to_an_open_payout
-- decisions whose payout another planner beat: they wait for that payout instead
UPDATE batch.decisions
   SET decision = 'DEFER', reason = 'PAYOUT_IN_PROGRESS', pay_amount = NULL, payout_id = NULL,
       details = details || jsonb_build_object('note', 'another planner opened a payout for it first')
 WHERE payout_id = ANY(:payout_ids)
RETURNING payout_id

-- name: revise
-- execution revised the planner's decision (e.g. a PAY whose balance moved becomes DEFER); the note and
-- the evidence go into the decision's details for the report
UPDATE batch.decisions
   SET final_decision = :decision, final_reason = :reason,
       details = details || jsonb_strip_nulls(jsonb_build_object('execution_note', CAST(:note AS text),
                                                                  'revised_because', CAST(:evidence AS jsonb)))
 WHERE payout_id = :payout_id

-- name: deposit_cursor
-- the ledger transfer id of the last incoming credit a run has decided (credits after it are new)
SELECT last_credit_id FROM batch.deposit_cursor

-- name: advance_deposit_cursor
UPDATE batch.deposit_cursor SET last_credit_id = greatest(last_credit_id, :last_credit_id), updated_at = now()

-- name: held_credits
-- ledger transfers of a flow (incoming credits: DEPOSIT; the bank's payouts: WITHDRAWAL_ANNOUNCE) whose latest
-- (non dry) decision is HOLD, or (deposits) whose operation stopped (moved and moved back, or needing
-- attention), and that no live operation is placing: every run decides them again, so held money is never
-- forgotten and a stopped deposit is listed by every run until a person resolves it
SELECT d.credit_reference
  FROM (SELECT DISTINCT ON (credit_reference) credit_reference, coalesce(final_decision, decision) AS decided
          FROM batch.decisions
         WHERE flow = :flow AND NOT dry_run
         ORDER BY credit_reference, id DESC) d
 WHERE (d.decided = 'HOLD'
        OR :flow = 'DEPOSIT' AND EXISTS (SELECT 1 FROM batch.payouts s
                    WHERE s.credit_reference = d.credit_reference AND s.state IN ('MOVE_REVERSED', 'NEEDS_ATTENTION')))
   AND NOT EXISTS (SELECT 1 FROM batch.payouts p
                    WHERE p.credit_reference = d.credit_reference
                      AND p.state NOT IN ('CANCELLED', 'MOVE_REVERSED', 'NEEDS_ATTENTION'))
 ORDER BY d.credit_reference

-- name: stopped_credits
-- the stopped deposit operation of each of these credits (moved and moved back, or needing attention)
SELECT DISTINCT ON (credit_reference) credit_reference, state, last_error
  FROM batch.payouts
 WHERE credit_reference = ANY(:references) AND state IN ('MOVE_REVERSED', 'NEEDS_ATTENTION')
 ORDER BY credit_reference, created_at DESC

-- name: decided_credits
-- those of :references that a non dry run of :flow decided already, or that a live operation carries
SELECT DISTINCT d.credit_reference
  FROM batch.decisions d
 WHERE d.credit_reference = ANY(:references) AND d.flow = :flow AND NOT d.dry_run
UNION
SELECT p.credit_reference
  FROM batch.payouts p
 WHERE p.credit_reference = ANY(:references) AND p.state <> 'CANCELLED'
