-- One journal, several flows (issue 16): withdrawals and deposits are operations of batch.payouts, told
-- apart by ``flow``; their decisions share batch.decisions. Existing rows are withdrawals.

ALTER TABLE batch.payouts ADD COLUMN flow text NOT NULL DEFAULT 'WITHDRAWAL'
    CHECK (flow IN ('WITHDRAWAL', 'DEPOSIT', 'DEPOSIT_ANNOUNCE'));
-- a deposit: the incoming credit's ledger reference (the event's Idempotency-Key)
ALTER TABLE batch.payouts ADD COLUMN credit_reference text;
ALTER TABLE batch.payouts ADD COLUMN ledger_moved_at timestamptz;
ALTER TABLE batch.payouts ALTER COLUMN counter_account DROP NOT NULL;
ALTER TABLE batch.payouts ALTER COLUMN divest_snapshot DROP NOT NULL;
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_withdrawal_fields
    CHECK (flow <> 'WITHDRAWAL' OR (counter_account IS NOT NULL AND divest_snapshot IS NOT NULL));
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_deposit_fields
    CHECK (flow = 'WITHDRAWAL' OR (credit_reference IS NOT NULL AND credit_reference <> ''));

-- the state list and the two "reached a state, so it has a reference" rules, now per flow
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT conname FROM pg_constraint
         WHERE conrelid = 'batch.payouts'::regclass AND contype = 'c'
           AND (pg_get_constraintdef(oid) LIKE '%ledger_reference IS NOT NULL%'
                OR pg_get_constraintdef(oid) LIKE '%transaction_id IS NOT NULL%'
                OR conname = 'payouts_state_check')
    LOOP
        EXECUTE format('ALTER TABLE batch.payouts DROP CONSTRAINT %I', name);
    END LOOP;
END $$;
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_state_check CHECK (state IN ('PLANNED', 'HELD', 'LEDGER_POSTED',
    'LEDGER_MOVED', 'TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED', 'EVENT_SENT', 'COMPLETED',
    'CANCELLED', 'NEEDS_ATTENTION'));
-- money moved in the ledger: a withdrawal or a client-side deposit past its first step carries the reference
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_moved_has_ledger_reference CHECK (
    flow = 'DEPOSIT_ANNOUNCE'
    OR state NOT IN ('LEDGER_POSTED', 'LEDGER_MOVED', 'TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED',
                     'EVENT_SENT', 'COMPLETED')
    OR ledger_reference IS NOT NULL);
ALTER TABLE batch.payouts ADD CONSTRAINT payouts_recorded_has_transaction CHECK (
    flow <> 'WITHDRAWAL'
    OR state NOT IN ('TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED', 'EVENT_SENT', 'COMPLETED')
    OR transaction_id IS NOT NULL);

-- at most one open withdrawal per portfolio (whoever planned it); deposits: one live operation per credit
DROP INDEX batch.payouts_one_open_per_portfolio;
CREATE UNIQUE INDEX payouts_one_open_withdrawal_per_portfolio ON batch.payouts (portfolio_id)
    WHERE flow = 'WITHDRAWAL' AND state NOT IN ('COMPLETED', 'CANCELLED');
CREATE UNIQUE INDEX payouts_one_operation_per_credit ON batch.payouts (credit_reference)
    WHERE credit_reference IS NOT NULL AND state <> 'CANCELLED';

ALTER TABLE batch.step_attempts DROP CONSTRAINT step_attempts_step_check;
ALTER TABLE batch.step_attempts ADD CONSTRAINT step_attempts_step_check CHECK (step IN ('LEDGER_POST',
    'RECORD_TRANSACTION', 'UPDATE_PORTFOLIO', 'SEND_EVENT', 'LEDGER_MOVE', 'SEND_DEPOSIT_EVENT'));

-- decisions: one per portfolio and run for withdrawals, one per incoming credit and run for deposits
ALTER TABLE batch.decisions ADD COLUMN flow text NOT NULL DEFAULT 'WITHDRAWAL'
    CHECK (flow IN ('WITHDRAWAL', 'DEPOSIT', 'DEPOSIT_ANNOUNCE'));
ALTER TABLE batch.decisions ADD COLUMN credit_reference text;
ALTER TABLE batch.decisions ALTER COLUMN portfolio_id DROP NOT NULL;
ALTER TABLE batch.decisions ADD CONSTRAINT decisions_withdrawal_has_portfolio
    CHECK (flow <> 'WITHDRAWAL' OR portfolio_id IS NOT NULL);
ALTER TABLE batch.decisions ADD CONSTRAINT decisions_deposit_has_credit
    CHECK (flow = 'WITHDRAWAL' OR credit_reference IS NOT NULL);
ALTER TABLE batch.decisions DROP CONSTRAINT decisions_run_id_portfolio_id_key;
CREATE UNIQUE INDEX decisions_one_per_portfolio_and_run ON batch.decisions (run_id, portfolio_id)
    WHERE flow = 'WITHDRAWAL';
CREATE UNIQUE INDEX decisions_one_per_credit_and_run ON batch.decisions (run_id, credit_reference)
    WHERE flow <> 'WITHDRAWAL';
CREATE INDEX decisions_by_credit ON batch.decisions (credit_reference, id) WHERE credit_reference IS NOT NULL;

-- the deposit planner's position in the ledger's incoming credits (credits after it are new)
CREATE TABLE batch.deposit_cursor (
    id              boolean     PRIMARY KEY DEFAULT true CHECK (id),
    last_credit_id  bigint      NOT NULL DEFAULT 0 CHECK (last_credit_id >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO batch.deposit_cursor DEFAULT VALUES;
GRANT SELECT, UPDATE ON batch.deposit_cursor TO batch_job;

-- payout_advance stamps the deposit's ledger move too (the rest as in 0003)
CREATE OR REPLACE FUNCTION batch.payout_advance(p_payout uuid, p_from text, p_worker text, p_through text[],
                                                p_updates jsonb, p_lease integer)
RETURNS batch.payouts LANGUAGE plpgsql AS $$
DECLARE
    u       jsonb := coalesce(p_updates, '{}'::jsonb);
    target  text := p_through[array_length(p_through, 1)];
    unknown text;
    result  batch.payouts;
BEGIN
    SELECT k INTO unknown FROM jsonb_object_keys(u) AS k
     WHERE k NOT IN ('ledger_reference', 'transaction_id', 'divest_target', 'holdings_base_cash',
                     'holdings_target_cash', 'event_status')
     LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'batch.payout_advance: column % may not be set by a step', unknown
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE batch.payouts p SET
        state                   = coalesce(target, p.state),
        updated_at              = now(),
        ledger_reference        = CASE WHEN u ? 'ledger_reference' THEN u ->> 'ledger_reference' ELSE p.ledger_reference END,
        transaction_id          = CASE WHEN u ? 'transaction_id' THEN u ->> 'transaction_id' ELSE p.transaction_id END,
        divest_target           = CASE WHEN u ? 'divest_target' THEN u ->> 'divest_target' ELSE p.divest_target END,
        holdings_base_cash      = CASE WHEN u ? 'holdings_base_cash'
                                       THEN (u ->> 'holdings_base_cash')::numeric ELSE p.holdings_base_cash END,
        holdings_target_cash    = CASE WHEN u ? 'holdings_target_cash'
                                       THEN (u ->> 'holdings_target_cash')::numeric ELSE p.holdings_target_cash END,
        event_status            = CASE WHEN u ? 'event_status' THEN (u ->> 'event_status')::integer ELSE p.event_status END,
        ledger_posted_at        = CASE WHEN 'LEDGER_POSTED' = ANY (p_through)
                                       THEN coalesce(p.ledger_posted_at, now()) ELSE p.ledger_posted_at END,
        ledger_moved_at         = CASE WHEN 'LEDGER_MOVED' = ANY (p_through)
                                       THEN coalesce(p.ledger_moved_at, now()) ELSE p.ledger_moved_at END,
        transaction_recorded_at = CASE WHEN 'TRANSACTION_RECORDED' = ANY (p_through)
                                       THEN coalesce(p.transaction_recorded_at, now()) ELSE p.transaction_recorded_at END,
        divest_cleared_at       = CASE WHEN 'DIVEST_CLEARED' = ANY (p_through)
                                       THEN coalesce(p.divest_cleared_at, now()) ELSE p.divest_cleared_at END,
        holdings_updated_at     = CASE WHEN 'HOLDINGS_UPDATED' = ANY (p_through)
                                       THEN coalesce(p.holdings_updated_at, now()) ELSE p.holdings_updated_at END,
        event_sent_at           = CASE WHEN 'EVENT_SENT' = ANY (p_through)
                                       THEN coalesce(p.event_sent_at, now()) ELSE p.event_sent_at END,
        completed_at            = CASE WHEN 'COMPLETED' = ANY (p_through)
                                       THEN coalesce(p.completed_at, now()) ELSE p.completed_at END,
        lease_owner             = CASE WHEN target = 'COMPLETED' THEN NULL ELSE p.lease_owner END,
        lease_expires_at        = CASE WHEN target = 'COMPLETED' THEN NULL
                                       WHEN p_lease IS NOT NULL
                                       THEN greatest(p.lease_expires_at, now() + make_interval(secs => p_lease))
                                       ELSE p.lease_expires_at END
     WHERE p.id = p_payout AND p.state = p_from AND p.lease_owner = p_worker
    RETURNING p.* INTO result;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payout % is no longer % under the lease of %', p_payout, p_from, p_worker
            USING ERRCODE = 'BJ001';
    END IF;
    RETURN result;
END $$;

-- The report's helpers (migration 0006) per flow: a withdrawal's decisions are ranked and compared by
-- portfolio, a deposit's by the incoming credit it decides.
CREATE OR REPLACE FUNCTION batch.still_held(d batch.decisions) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT d.decision = 'HOLD' AND d.reason <> 'PAYOUT_NEEDS_ATTENTION' AND coalesce((
        SELECT pd.decision = 'HOLD' AND batch.hold_kind(pd) = batch.hold_kind(d)
               AND pd.requested_amount IS NOT DISTINCT FROM d.requested_amount
               AND pd.requested_raw IS NOT DISTINCT FROM d.requested_raw
          FROM batch.runs cur
          CROSS JOIN LATERAL (
                SELECT r.id FROM batch.runs r
                 WHERE r.dry_run = false AND r.started_at < cur.started_at
                   AND r.parameters ->> 'role' IS DISTINCT FROM 'worker'
                   AND (jsonb_array_length(coalesce(r.parameters -> 'portfolio_ids', '[]'::jsonb)) = 0
                        OR r.parameters -> 'portfolio_ids' ? d.portfolio_id)
                 ORDER BY r.started_at DESC LIMIT 1) prev
          JOIN batch.decisions pd ON pd.run_id = prev.id AND pd.flow = d.flow
               AND CASE WHEN d.flow = 'WITHDRAWAL' THEN pd.portfolio_id = d.portfolio_id
                        ELSE pd.credit_reference = d.credit_reference END
         WHERE cur.id = d.run_id), false)
$$;

CREATE OR REPLACE FUNCTION batch.decision_ranks(p_runs uuid[])
RETURNS TABLE (decision_id bigint, portfolio_id text, rank bigint) LANGUAGE sql STABLE AS $$
    SELECT d.id, d.portfolio_id,
           row_number() OVER (
               PARTITION BY d.portfolio_id
               ORDER BY (d.payout_id IS NULL
                         AND d.reason IN ('AWAITING_APPROVAL', 'PAYOUT_NEEDS_ATTENTION', 'PAYOUT_IN_PROGRESS')
                         AND EXISTS (SELECT 1 FROM batch.decisions e
                                      WHERE e.run_id = ANY (p_runs) AND e.portfolio_id = d.portfolio_id
                                        AND e.flow = 'WITHDRAWAL' AND e.payout_id IS NOT NULL AND e.id < d.id)),
                        d.created_at DESC, d.id DESC)
      FROM batch.decisions d
     WHERE d.run_id = ANY (p_runs) AND d.flow = 'WITHDRAWAL'
$$;
