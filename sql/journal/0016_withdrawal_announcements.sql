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
