-- An operator's cancel (migration 0005) must never race the engine: a payout a worker holds may have its
-- ledger post in flight, and one whose earlier ledger post has no recorded outcome may already be paid.
-- Both are refused; the engine's own cancel (before any money moved, under its lease) is unchanged.
CREATE OR REPLACE FUNCTION batch.payout_cancel(p_payout uuid, p_reason text, p_display_name text)
RETURNS batch.operator_outcome LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who    text := batch.operator_identity('cancel');
    app    text := coalesce(current_setting('application_name', true), '');
    p      batch.payouts;
BEGIN
    PERFORM batch.require_reason(p_reason);
    SELECT * INTO p FROM batch.payouts WHERE id = p_payout FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no payout %', p_payout USING ERRCODE = 'BJ001';
    END IF;
    IF p.ledger_reference IS NOT NULL THEN
        RAISE EXCEPTION 'payout % reached the ledger (%); it cannot be cancelled', p_payout, p.ledger_reference
            USING ERRCODE = 'BJ001';
    END IF;
    IF p.state NOT IN ('PLANNED', 'HELD', 'NEEDS_ATTENTION') THEN
        RAISE EXCEPTION 'payout % is %; it cannot be cancelled', p_payout, p.state USING ERRCODE = 'BJ001';
    END IF;
    -- a worker holds it: its ledger post may be in flight right now
    IF p.lease_owner IS NOT NULL AND p.lease_expires_at > now() THEN
        RAISE EXCEPTION 'payout % is being executed by %; cancel it once that run is done', p_payout, p.lease_owner
            USING ERRCODE = 'BJ001';
    END IF;
    -- an earlier attempt to move its money may have succeeded: a run must read the ledger back first
    IF EXISTS (SELECT 1 FROM batch.step_attempts a
                WHERE a.payout_id = p_payout AND a.step IN ('LEDGER_POST', 'LEDGER_MOVE')
                  AND (a.outcome IS NULL OR a.outcome IN ('OK', 'ADOPTED'))) THEN
        RAISE EXCEPTION 'payout %: an attempt to move its money has no known outcome; retry it so a run reads the ledger back, then cancel',
            p_payout USING ERRCODE = 'BJ001';
    END IF;
    UPDATE batch.payouts
       SET state = 'CANCELLED', updated_at = now(), stopped_at = now(), lease_owner = NULL, lease_expires_at = NULL
     WHERE id = p_payout;
    UPDATE batch.decisions SET final_decision = 'DEFER', final_reason = 'CANCELLED_BY_OPERATOR'
     WHERE payout_id = p_payout;
    PERFORM batch.audit_append('payout.cancelled_by_operator', NULL, p_payout, p.portfolio_id,
                               jsonb_build_object('from', p.state, 'to', 'CANCELLED', 'reason', p_reason)::text,
                               p_display_name);
    RETURN (p.id, p.state, 'CANCELLED', p.amount, p.currency, NULL, NULL, NULL, who, app)::batch.operator_outcome;
END $$;
