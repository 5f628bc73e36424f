-- Moved money is never left unannounced (issue 26): a deposit whose announcement InvestSuite refuses for good
-- after the ledger move goes LEDGER_MOVED -> ANNOUNCE_REFUSED, then the step REVERSE_LEDGER_MOVE moves the
-- money back (customer -> incoming account) and the operation ends MOVE_REVERSED; its credit is held.

ALTER TABLE batch.payouts DROP CONSTRAINT payouts_state_check;
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_state_check CHECK (state IN ('PLANNED', 'HELD', 'LEDGER_POSTED',
    'LEDGER_MOVED', 'TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED', 'EVENT_SENT', 'COMPLETED',
    'CANCELLED', 'NEEDS_ATTENTION', 'ANNOUNCE_REFUSED', 'MOVE_REVERSED'));
-- only a client-side deposit moved money that can be refused and undone
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_reversal_is_a_deposit_move CHECK (
    state NOT IN ('ANNOUNCE_REFUSED', 'MOVE_REVERSED') OR (flow = 'DEPOSIT' AND ledger_reference IS NOT NULL));

ALTER TABLE batch.step_attempts DROP CONSTRAINT step_attempts_step_check;
ALTER TABLE batch.step_attempts ADD CONSTRAINT step_attempts_step_check CHECK (step IN ('LEDGER_POST',
    'RECORD_TRANSACTION', 'UPDATE_PORTFOLIO', 'SEND_EVENT', 'LEDGER_MOVE', 'SEND_DEPOSIT_EVENT',
    'REVERSE_LEDGER_MOVE'));
