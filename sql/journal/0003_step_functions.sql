-- One round trip per step boundary. Recording a step's intent (guard + attempt row) and its outcome
-- (attempt row, state transition, decision note, audit row) are each one function call: one
-- statement, one transaction, committed before the function returns to the client. The audit
-- chain's advisory lock is then held for the server-side work and the commit only, never across a
-- client round trip, and the journal costs two statements per step instead of nine.
--
-- Transition rules stay in Python (batch.domain.payout.check_transition); these functions apply a
-- transition the caller has checked, guarded by the state it expects and the lease it holds.

-- Apply column updates (a JSON object of the few columns a step may set) and, when p_through is not
-- empty, move the payout through those states to the last one, stamping each. Guarded: the payout
-- must be in p_from and leased by p_worker, else SQLSTATE BJ001 (the caller lost a race).
CREATE FUNCTION batch.payout_advance(p_payout uuid, p_from text, p_worker text, p_through text[],
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
        -- a completed payout needs no lease; a step's intent renews it (the executor's heartbeat)
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

-- The intent before an external call: guard (and renew the lease, apply updates), then the attempt row.
CREATE FUNCTION batch.step_begin(p_payout uuid, p_state text, p_worker text, p_lease integer,
                                 p_run uuid, p_step text, p_intent jsonb, p_updates jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    attempt_id bigint;
BEGIN
    PERFORM batch.payout_advance(p_payout, p_state, p_worker, '{}'::text[], p_updates, p_lease);
    INSERT INTO batch.step_attempts (payout_id, run_id, step, intent)
    VALUES (p_payout, p_run, p_step, p_intent)
    RETURNING id INTO attempt_id;
    RETURN attempt_id;
END $$;

-- The outcome of an attempt: close the attempt, advance the payout (if there is anything to apply),
-- add the report's execution note, append the audit row (its details are canonical JSON made by
-- the caller, intent included). Returns the payout afterwards, or NULL when it was not touched.
--
-- Committed without waiting for the WAL flush (synchronous_commit off for this transaction only):
-- the audit chain's lock is then released at once instead of after an fsync, which otherwise
-- serialises every payout of every worker behind the disk. Nothing is weakened: the next intent
-- (step_begin, or any other write) commits synchronously, and WAL is flushed in order, so an
-- outcome is durable before the next external call is made. Only a database crash in the last
-- ~200 ms can lose outcomes, never an intent; such a step then has an intent without an outcome,
-- and the next attempt reads the remote state back before acting (DESIGN.md §4), as after a kill.
CREATE FUNCTION batch.step_finish(p_attempt bigint, p_outcome text, p_detail jsonb,
                                  p_payout uuid, p_from text, p_worker text, p_through text[],
                                  p_updates jsonb, p_note text,
                                  p_actor text, p_action text, p_run uuid, p_portfolio text, p_audit text)
RETURNS batch.payouts LANGUAGE plpgsql AS $$
DECLARE
    result batch.payouts;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE batch.step_attempts SET outcome = p_outcome, outcome_at = now(), detail = p_detail
     WHERE id = p_attempt AND outcome IS NULL;
    IF cardinality(p_through) > 0 OR p_updates <> '{}'::jsonb THEN
        result := batch.payout_advance(p_payout, p_from, p_worker, p_through, p_updates, NULL);
    END IF;
    IF p_note IS NOT NULL THEN
        UPDATE batch.decisions SET details = details || jsonb_build_object('execution_note', p_note)
         WHERE payout_id = p_payout;
    END IF;
    INSERT INTO batch.audit_log (seq, at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash, hash)
    VALUES (0, now(), p_actor, p_action, p_run, p_payout, p_portfolio, p_audit, '', '');
    RETURN result;
END $$;
