-- Withdrawals with broker integration by InvestSuite (issue 25): the job announces the payouts the bank's core
-- banking made (flow WITHDRAWAL_ANNOUNCE). Like a deposit, such an operation and its decisions are keyed by a
-- ledger transfer reference (credit_reference: here the bank's payout to the counter account, which is also
-- the event's Idempotency-Key); the job moves no money, so it carries no ledger reference of its own.

ALTER TABLE batch.payouts DROP CONSTRAINT payouts_flow_check;
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_flow_check
    CHECK (flow IN ('WITHDRAWAL', 'DEPOSIT', 'DEPOSIT_ANNOUNCE', 'WITHDRAWAL_ANNOUNCE'));
ALTER TABLE batch.decisions DROP CONSTRAINT decisions_flow_check;
ALTER TABLE batch.decisions ADD CONSTRAINT decisions_flow_check
    CHECK (flow IN ('WITHDRAWAL', 'DEPOSIT', 'DEPOSIT_ANNOUNCE', 'WITHDRAWAL_ANNOUNCE'));

-- an announce-only operation reaches EVENT_SENT/COMPLETED without a ledger reference of the job's
ALTER TABLE batch.payouts DROP CONSTRAINT payouts_moved_has_ledger_reference;
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_moved_has_ledger_reference CHECK (
    flow IN ('DEPOSIT_ANNOUNCE', 'WITHDRAWAL_ANNOUNCE')
    OR state NOT IN ('LEDGER_POSTED', 'LEDGER_MOVED', 'TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED',
                     'EVENT_SENT', 'COMPLETED')
    OR ledger_reference IS NOT NULL);

-- "Still held" (0010) compares with the last completed nightly run that decided the same flow: a run of
-- `--flow deposits` between two nightly withdrawal runs (or the other way round) does not make every unchanged
-- hold of the other flow alert again. Runs record their flows in parameters.flows (a deposit decision's flow is
-- DEPOSIT in both deposit set-ups, and a run that places deposits lists DEPOSIT).
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
                   AND coalesce(r.parameters -> 'flows', '["WITHDRAWAL", "DEPOSIT"]'::jsonb) ? d.flow
                   AND (jsonb_array_length(coalesce(r.parameters -> 'portfolio_ids', '[]'::jsonb)) = 0
                        OR r.parameters -> 'portfolio_ids' ? d.portfolio_id)
                 ORDER BY r.started_at DESC LIMIT 1) prev
          JOIN batch.decisions pd ON pd.run_id = prev.id AND pd.flow = d.flow
               AND CASE WHEN d.flow = 'WITHDRAWAL' THEN pd.portfolio_id = d.portfolio_id
                        ELSE pd.credit_reference = d.credit_reference END
         WHERE cur.id = d.run_id), false)
$$;
