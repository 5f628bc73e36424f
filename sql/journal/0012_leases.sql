-- Leases with fencing for every flow (the nightly run, its workers, the listener's instances).
--
-- A session advisory lock goes with its connection: after a database restart a second `batch run`
-- got the lock while the first one was still paying. So the right to run is now a row: a lease with
-- a fencing token (a new one at every take-over) and a heartbeat. The holder renews it every few
-- seconds; after a restart it re-takes it (same run, same token) or finds it taken and stops. A run
-- whose lease was taken over (or that was marked ABANDONED) is *fenced*: batch.step_begin,
-- batch.step_finish and the claim refuse it in the same statement (SQLSTATE BJ003), so it can change
-- nothing any more, whatever it still believes.
--
-- The session lock stays as the fast liveness proof: a holder records the server's start time
-- (pg_postmaster_start_time) as lock_epoch whenever it holds the lock; a contender that gets the lock
-- while lock_epoch is the server's current start time knows the holder's session is gone without a
-- restart (its process died) and takes over at once. After a restart lock_epoch is older than the
-- server: the holder gets expires_at to come back before anyone may take over.

ALTER TABLE batch.runs ADD COLUMN fenced_at timestamptz;

CREATE SEQUENCE batch.lease_tokens;

CREATE TABLE batch.leases (
    name         text        PRIMARY KEY,
    -- the run holding it (NULL: released, or a listener instance between runs)
    run_id       uuid,
    token        bigint      NOT NULL CHECK (token > 0),
    host         text        NOT NULL,
    pid          integer     NOT NULL CHECK (pid > 0),
    lock_epoch   timestamptz,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    released_at  timestamptz
);
GRANT SELECT, INSERT, UPDATE ON batch.leases TO batch_job;
GRANT USAGE ON SEQUENCE batch.lease_tokens TO batch_job;

-- Refuse a fenced run's write (BJ003). A run that never held a lease (an operator's action, a test) has
-- no fence to lose.
CREATE FUNCTION batch.check_fence(p_run uuid) RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_run IS NOT NULL AND EXISTS (SELECT 1 FROM batch.runs WHERE id = p_run AND fenced_at IS NOT NULL) THEN
        RAISE EXCEPTION 'run % lost its lease: another run took over, it may change nothing more', p_run
            USING ERRCODE = 'BJ003';
    END IF;
END $$;

-- step_begin (0003) behind the fence
CREATE OR REPLACE FUNCTION batch.step_begin(p_payout uuid, p_state text, p_worker text, p_lease integer,
                                            p_run uuid, p_step text, p_intent jsonb, p_updates jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    attempt_id bigint;
BEGIN
    PERFORM batch.check_fence(p_run);
    PERFORM batch.payout_advance(p_payout, p_state, p_worker, '{}'::text[], p_updates, p_lease);
    INSERT INTO batch.step_attempts (payout_id, run_id, step, intent)
    VALUES (p_payout, p_run, p_step, p_intent)
    RETURNING id INTO attempt_id;
    RETURN attempt_id;
END $$;

-- step_finish (0005) behind the fence
CREATE OR REPLACE FUNCTION batch.step_finish(p_attempt bigint, p_outcome text, p_detail jsonb,
                                             p_payout uuid, p_from text, p_worker text, p_through text[],
                                             p_updates jsonb, p_note text,
                                             p_actor text, p_action text, p_run uuid, p_portfolio text, p_audit text)
RETURNS batch.payouts LANGUAGE plpgsql AS $$
DECLARE
    result batch.payouts;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM batch.check_fence(p_run);
    UPDATE batch.step_attempts SET outcome = p_outcome, outcome_at = now(), detail = p_detail
     WHERE id = p_attempt AND outcome IS NULL;
    IF cardinality(p_through) > 0 OR p_updates <> '{}'::jsonb THEN
        result := batch.payout_advance(p_payout, p_from, p_worker, p_through, p_updates, NULL);
    END IF;
    IF p_note IS NOT NULL THEN
        UPDATE batch.decisions SET details = details || jsonb_build_object('execution_note', p_note)
         WHERE payout_id = p_payout;
    END IF;
    PERFORM batch.audit_append(p_action, p_run, p_payout, p_portfolio, p_audit, p_actor);
    RETURN result;
END $$;
