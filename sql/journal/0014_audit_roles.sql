-- The audit trail as an auditor and a hostile insider would try it (issue 22):
--   1. actions belong to roles: batch.audit_actions names every action and who may append it. The job's
--      role appends only the job's actions through batch.audit_append (same signature as in 0005, so the
--      step functions keep calling it); operators' actions (approvals, retries, cancels, re-anchoring) and
--      the full verification's result are appended only by the SECURITY DEFINER functions that perform
--      them, through batch.audit_append_stamped, which no role is granted. The chain trigger checks the
--      login role against the action too, whoever inserts;
--   2. full verifications: batch.audit_verifications keeps each one's result (batch.audit_record_verification);
--      a run moves no money while a failed one has not been followed by a re-anchoring;
--   3. four-eyes frozen with the hold: a payout entering HELD records the approvals it needs and the policy
--      version they come from; a later policy can add approvals to payouts already held, never remove them.

-- ---------------------------------------------------------------------------------------------------
-- 1. Actions by role
-- ---------------------------------------------------------------------------------------------------
-- action: an exact action name, or a prefix ending in '.*' (every action under it); an exact name wins
-- over a prefix. appended_by: 'job' (batch.audit_append, members of batch_job), 'operator' (only the
-- payout_* and audit_reanchor functions, a person's login role), 'verifier' (only
-- batch.audit_record_verification, the job's or an operator's login). A new action of the job is a row
-- here, added by a migration.
CREATE TABLE batch.audit_actions (
    action      text PRIMARY KEY CHECK (action ~ '^[a-z_]+(\.[a-z_]+)*(\.\*)?$'),
    appended_by text NOT NULL CHECK (appended_by IN ('job', 'operator', 'verifier')),
    note        text NOT NULL
);
INSERT INTO batch.audit_actions (action, appended_by, note) VALUES
    ('run.*',                       'job',      'a run started, planned, finished, refused, abandoned'),
    ('step.*',                      'job',      'a payout step''s outcome (batch.step_finish)'),
    ('decision.*',                  'job',      'a decision recorded at planning'),
    ('deposit.*',                   'job',      'the deposit flow'),
    ('flow.*',                      'job',      'the step engine''s flows'),
    ('registry.*',                  'job',      'the portfolio registry (listener)'),
    ('bus.*',                       'job',      'the bus inbox (listener)'),
    ('listener.*',                  'job',      'the bus listener'),
    ('reconcile.*',                 'job',      'a reconciliation recorded'),
    ('policy.four_eyes_threshold',  'job',      'the four-eyes thresholds the job runs with (batch.set_approval_policy)'),
    ('payout.needs_attention',      'job',      'the engine stopped a payout for a person'),
    ('payout.cancelled',            'job',      'the engine cancelled a payout before any money moved'),
    ('payout.stalled',              'job',      'a payout failed transiently too often in a run'),
    ('payout.approved',             'operator', 'batch.payout_approve: the last approval a HELD payout needed'),
    ('payout.approval_recorded',    'operator', 'batch.payout_approve: an approval, more needed'),
    ('payout.retry',                'operator', 'batch.payout_retry'),
    ('payout.cancelled_by_operator','operator', 'batch.payout_cancel'),
    ('audit.reanchored',            'operator', 'batch.audit_reanchor: a broken row accepted after an investigation'),
    ('audit.full_verification',     'verifier', 'batch.audit_record_verification: a full verification''s result');
CREATE TRIGGER audit_actions_append_only BEFORE UPDATE OR DELETE ON batch.audit_actions
    FOR EACH ROW EXECUTE FUNCTION batch.refuse_change();

-- Who may append p_action: 'job', 'operator', 'verifier', or NULL (an action nobody may append).
CREATE FUNCTION batch.audit_action_kind(p_action text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.appended_by FROM batch.audit_actions a
     WHERE a.action = p_action
        OR (right(a.action, 2) = '.*' AND starts_with(p_action, left(a.action, -1)))
     ORDER BY a.action = p_action DESC, length(a.action) DESC
     LIMIT 1
$$;

-- Refuses the row unless the login role may append the action: the job's actions need a member of
-- batch_job (a superuser is one), operators' a member of batch_operator that is not a member of batch_job,
-- the verifier's either. Raised as insufficient_privilege.
CREATE FUNCTION batch.audit_action_allowed(p_action text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text := batch.audit_action_kind(p_action);
    who  text := session_user;
    job  boolean := pg_has_role(who, 'batch_job', 'MEMBER');
    op   boolean := pg_has_role(who, 'batch_operator', 'MEMBER');
BEGIN
    IF kind IS NULL THEN
        RAISE EXCEPTION 'audit action % is not known (batch.audit_actions): refused for role %', p_action, who
            USING ERRCODE = 'insufficient_privilege';
    ELSIF kind = 'job' AND NOT job THEN
        RAISE EXCEPTION 'audit action % is the job''s: role % is not a member of batch_job', p_action, who
            USING ERRCODE = 'insufficient_privilege';
    ELSIF kind = 'operator' AND (job OR NOT op) THEN
        RAISE EXCEPTION 'audit action % is an operator''s: role % is not an operator (a member of batch_operator and not of batch_job)',
            p_action, who USING ERRCODE = 'insufficient_privilege';
    ELSIF kind = 'verifier' AND NOT (job OR op) THEN
        RAISE EXCEPTION 'audit action % needs a member of batch_job or batch_operator, not role %', p_action, who
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

-- The chain trigger (0005's, plus the action check): seq, time, identity and hash are the database's.
CREATE OR REPLACE FUNCTION batch.audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash text;
BEGIN
    PERFORM batch.audit_action_allowed(NEW.action);
    PERFORM pg_advisory_xact_lock(hashtext('batch.audit_log'));
    SELECT a.seq, a.hash INTO last_seq, last_hash FROM batch.audit_log a ORDER BY a.seq DESC LIMIT 1;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, repeat('0', 64));
    NEW.at := date_trunc('microseconds', clock_timestamp());
    NEW.actor := session_user;
    NEW.application_name := coalesce(current_setting('application_name', true), '');
    NEW.hash_version := 2;
    NEW.hash := batch.audit_hash_v2(NEW.prev_hash, NEW.seq, NEW.at, NEW.actor, NEW.application_name,
                                    NEW.display_name, NEW.action, NEW.run_id, NEW.payout_id,
                                    NEW.portfolio_id, NEW.details);
    RETURN NEW;
END $$;

-- The functions that perform an operator's or the verifier's action append it here; no role is granted it.
CREATE FUNCTION batch.audit_append_stamped(p_action text, p_run uuid, p_payout uuid, p_portfolio text,
                                           p_details text, p_display_name text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    appended bigint;
BEGIN
    IF batch.audit_action_kind(p_action) NOT IN ('operator', 'verifier') THEN
        RAISE EXCEPTION 'audit action % is not an operator''s or the verifier''s', p_action
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO batch.audit_log (seq, at, actor, action, run_id, payout_id, portfolio_id, details,
                                 prev_hash, hash, display_name)
    VALUES (0, now(), session_user, p_action, p_run, p_payout, p_portfolio, p_details, '', '', p_display_name)
    RETURNING seq INTO appended;
    RETURN appended;
END $$;
REVOKE ALL ON FUNCTION batch.audit_append_stamped(text, uuid, uuid, text, text, text) FROM PUBLIC;

-- The job's appends (signature of 0005): only the job's own actions.
CREATE OR REPLACE FUNCTION batch.audit_append(p_action text, p_run uuid, p_payout uuid, p_portfolio text,
                                              p_details text, p_display_name text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind     text := batch.audit_action_kind(p_action);
    appended bigint;
BEGIN
    IF kind IS DISTINCT FROM 'job' THEN
        RAISE EXCEPTION 'role % may not append audit action % through audit_append: %', session_user, p_action,
            CASE WHEN kind IS NULL THEN 'not one of the job''s actions (batch.audit_actions)'
                 ELSE 'an ' || kind || '''s action is appended only by the function that performs it' END
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO batch.audit_log (seq, at, actor, action, run_id, payout_id, portfolio_id, details,
                                 prev_hash, hash, display_name)
    VALUES (0, now(), session_user, p_action, p_run, p_payout, p_portfolio, p_details, '', '', p_display_name)
    RETURNING seq INTO appended;
    RETURN appended;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- 3. Four-eyes frozen with the hold (before the operator functions that read it)
-- ---------------------------------------------------------------------------------------------------
-- version: 1 for the first policy recorded, + 1 at every change (0 on a payout: none was ever recorded).
ALTER TABLE batch.approval_policy ADD COLUMN version integer NOT NULL DEFAULT 1 CHECK (version >= 1);
ALTER TABLE batch.payouts
    ADD COLUMN approvals_required      integer CHECK (approvals_required IN (1, 2)),
    ADD COLUMN approval_policy_version integer CHECK (approval_policy_version >= 0),
    ADD CONSTRAINT payouts_held_needs_approvals CHECK (state <> 'HELD' OR approvals_required IS NOT NULL);

-- What the payout needs: what was frozen when it was held, or more if the current policy asks for more.
CREATE FUNCTION batch.payout_approvals_needed(p batch.payouts) RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT greatest(coalesce(p.approvals_required, 2), batch.approvals_required(p.currency, p.amount))
$$;

-- A payout entering HELD records what it needs now; the requirement of a held payout never goes down.
CREATE FUNCTION batch.payout_freeze_approvals() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.state = 'HELD' AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'HELD') THEN
        NEW.approvals_required := greatest(batch.approvals_required(NEW.currency, NEW.amount),
                                           CASE WHEN TG_OP = 'UPDATE' THEN OLD.approvals_required END);
        NEW.approval_policy_version := coalesce((SELECT version FROM batch.approval_policy WHERE id), 0);
    ELSIF TG_OP = 'UPDATE' AND NEW.approvals_required IS DISTINCT FROM OLD.approvals_required
          AND (NEW.approvals_required IS NULL OR NEW.approvals_required < OLD.approvals_required) THEN
        RAISE EXCEPTION 'payout %: the approvals it needs (%) may be raised, never lowered (to %)',
            OLD.id, OLD.approvals_required, NEW.approvals_required USING ERRCODE = 'BJ002';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payouts_freeze_approvals BEFORE INSERT OR UPDATE ON batch.payouts
    FOR EACH ROW EXECUTE FUNCTION batch.payout_freeze_approvals();

-- Payouts already HELD: frozen under the policy recorded now.
UPDATE batch.payouts p
   SET approvals_required = batch.approvals_required(p.currency, p.amount),
       approval_policy_version = coalesce((SELECT version FROM batch.approval_policy WHERE id), 0)
 WHERE p.state = 'HELD';

-- 0005's, plus: the version goes up at each change, and payouts already held that the new policy asks more
-- of are raised to it (never lowered).
CREATE OR REPLACE FUNCTION batch.set_approval_policy(p_thresholds jsonb, p_run uuid, p_display_name text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    previous jsonb;
    was      integer;
    bad      text;
    raised   integer;
BEGIN
    SELECT k INTO bad FROM jsonb_each_text(p_thresholds) AS t(k, v)
     WHERE k !~ '^[A-Z]{3}$' OR v !~ '^[0-9]+(\.[0-9]+)?$' OR v::numeric <= 0
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'four-eyes threshold for % must be a positive amount', bad USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT four_eyes_threshold, version INTO previous, was FROM batch.approval_policy WHERE id FOR UPDATE;
    IF previous IS NOT DISTINCT FROM p_thresholds THEN
        RETURN false;
    END IF;
    INSERT INTO batch.approval_policy (id, four_eyes_threshold, recorded_at, recorded_by, application_name, version)
    VALUES (true, p_thresholds, now(), session_user, coalesce(current_setting('application_name', true), ''), 1)
    ON CONFLICT (id) DO UPDATE SET four_eyes_threshold = EXCLUDED.four_eyes_threshold,
        recorded_at = EXCLUDED.recorded_at, recorded_by = EXCLUDED.recorded_by,
        application_name = EXCLUDED.application_name, version = batch.approval_policy.version + 1;
    UPDATE batch.payouts p
       SET approvals_required = batch.approvals_required(p.currency, p.amount),
           approval_policy_version = coalesce(was, 0) + 1
     WHERE p.state = 'HELD' AND batch.approvals_required(p.currency, p.amount) > p.approvals_required;
    GET DIAGNOSTICS raised = ROW_COUNT;
    PERFORM batch.audit_append('policy.four_eyes_threshold', p_run, NULL, NULL,
                               jsonb_build_object('from', previous, 'to', p_thresholds, 'version', coalesce(was, 0) + 1,
                                                  'held_payouts_raised', raised)::text, p_display_name);
    RETURN true;
END $$;

-- A HELD payout moves on (other than to CANCELLED) only with the approvals it needs, whoever updates it.
CREATE OR REPLACE FUNCTION batch.payout_release_guard() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    have integer;
    need integer;
BEGIN
    SELECT count(*) INTO have FROM batch.payout_approvals WHERE payout_id = OLD.id;
    need := batch.payout_approvals_needed(OLD);
    IF have < need THEN
        RAISE EXCEPTION 'payout % is HELD: % of % approvals recorded', OLD.id, have, need USING ERRCODE = 'BJ002';
    END IF;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The operators' functions (0005, 0009), now appending through audit_append_stamped; approvals need what
-- the payout froze when it was held (or more, if the policy asks for more now).
-- ---------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION batch.payout_approve(p_payout uuid, p_reason text, p_display_name text)
RETURNS batch.operator_outcome LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who     text := batch.operator_identity('approve');
    app     text := coalesce(current_setting('application_name', true), '');
    p       batch.payouts;
    need    integer;
    have    integer;
    names   text[];
    earlier timestamptz;
    result  batch.operator_outcome;
BEGIN
    PERFORM batch.require_reason(p_reason);
    SELECT * INTO p FROM batch.payouts WHERE id = p_payout FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no payout %', p_payout USING ERRCODE = 'BJ001';
    END IF;
    IF p.state <> 'HELD' THEN
        RAISE EXCEPTION 'payout % is %, not HELD', p_payout, p.state USING ERRCODE = 'BJ001';
    END IF;
    SELECT approved_at INTO earlier FROM batch.payout_approvals WHERE payout_id = p_payout AND approver = who;
    IF FOUND THEN
        RAISE EXCEPTION 'role % already approved payout % (at %): a second approval must come from a different operator',
            who, p_payout, earlier USING ERRCODE = 'BJ002';
    END IF;
    need := batch.payout_approvals_needed(p);
    INSERT INTO batch.payout_approvals (payout_id, approver, display_name, application_name, reason, required, approved_at)
    VALUES (p_payout, who, p_display_name, app, p_reason, need, now());
    SELECT count(*), array_agg(approver ORDER BY id) INTO have, names
      FROM batch.payout_approvals WHERE payout_id = p_payout;
    result := (p.id, p.state, p.state, p.amount, p.currency, have, need, names, who, app);
    IF have >= need THEN
        UPDATE batch.payouts
           SET state = 'PLANNED', updated_at = now(), lease_owner = NULL, lease_expires_at = NULL,
               approved_by = array_to_string(names, ', '), approved_at = now(),
               approval_reason = (SELECT string_agg(CASE WHEN have > 1 THEN approver || ': ' ELSE '' END || reason, '; '
                                                    ORDER BY id)
                                    FROM batch.payout_approvals WHERE payout_id = p_payout)
         WHERE id = p_payout;
        result.state := 'PLANNED';
    END IF;
    PERFORM batch.audit_append_stamped(
        CASE WHEN have >= need THEN 'payout.approved' ELSE 'payout.approval_recorded' END,
        NULL, p_payout, p.portfolio_id,
        jsonb_build_object('from', 'HELD', 'to', result.state, 'reason', p_reason,
                           'approval', have, 'required', need, 'approvers', to_jsonb(names),
                           'frozen_required', p.approvals_required, 'policy_version', p.approval_policy_version,
                           'amount', trim_scale(p.amount)::text, 'currency', p.currency)::text,
        p_display_name);
    RETURN result;
END $$;

CREATE OR REPLACE FUNCTION batch.payout_retry(p_payout uuid, p_reason text, p_display_name text)
RETURNS batch.operator_outcome LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who    text := batch.operator_identity('retry');
    app    text := coalesce(current_setting('application_name', true), '');
    p      batch.payouts;
BEGIN
    PERFORM batch.require_reason(p_reason);
    SELECT * INTO p FROM batch.payouts WHERE id = p_payout FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no payout %', p_payout USING ERRCODE = 'BJ001';
    END IF;
    IF p.state <> 'NEEDS_ATTENTION' OR p.stopped_in_state IS NULL THEN
        RAISE EXCEPTION 'payout % is %, not NEEDS_ATTENTION', p_payout, p.state USING ERRCODE = 'BJ001';
    END IF;
    UPDATE batch.payouts
       SET state = p.stopped_in_state, updated_at = now(), retried_at = now(), lease_owner = NULL, lease_expires_at = NULL
     WHERE id = p_payout;
    PERFORM batch.audit_append_stamped('payout.retry', NULL, p_payout, p.portfolio_id,
                                       jsonb_build_object('from', p.state, 'to', p.stopped_in_state, 'reason', p_reason)::text,
                                       p_display_name);
    RETURN (p.id, p.state, p.stopped_in_state, p.amount, p.currency, NULL, NULL, NULL, who, app)::batch.operator_outcome;
END $$;

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
    -- a worker holds it: its ledger post may be in flight right now (0009)
    IF p.lease_owner IS NOT NULL AND p.lease_expires_at > now() THEN
        RAISE EXCEPTION 'payout % is being executed by %; cancel it once that run is done', p_payout, p.lease_owner
            USING ERRCODE = 'BJ001';
    END IF;
    -- an earlier attempt to move its money may have succeeded: a run must read the ledger back first (0009)
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
    PERFORM batch.audit_append_stamped('payout.cancelled_by_operator', NULL, p_payout, p.portfolio_id,
                                       jsonb_build_object('from', p.state, 'to', 'CANCELLED', 'reason', p_reason)::text,
                                       p_display_name);
    RETURN (p.id, p.state, 'CANCELLED', p.amount, p.currency, NULL, NULL, NULL, who, app)::batch.operator_outcome;
END $$;

-- 0005's, appending through audit_append_stamped; granted to operators only (the job never re-anchors).
CREATE OR REPLACE FUNCTION batch.audit_reanchor(p_broken_seq bigint, p_problem text, p_reason text, p_display_name text)
RETURNS batch.audit_checkpoints LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who    text := batch.operator_identity('re-anchor the audit chain');
    at_seq bigint;
    result batch.audit_checkpoints;
BEGIN
    PERFORM batch.require_reason(p_reason);
    PERFORM pg_advisory_xact_lock(hashtext('batch.audit_checkpoints'));
    IF p_broken_seq IS NULL OR p_broken_seq < 1
       OR p_broken_seq > (SELECT coalesce(max(seq), 0) + 1 FROM batch.audit_log) THEN
        RAISE EXCEPTION 'no audit row % to accept', p_broken_seq USING ERRCODE = 'BJ002';
    END IF;
    at_seq := batch.audit_append_stamped('audit.reanchored', NULL, NULL, NULL,
                                         jsonb_build_object('accepted_break_seq', p_broken_seq, 'problem', p_problem,
                                                            'reason', p_reason)::text, p_display_name);
    INSERT INTO batch.audit_checkpoints (seq, hash, from_seq, rows_checked, full_chain, verified_at, verified_by,
                                         application_name, display_name, accepted_break_seq, reason)
    SELECT a.seq, a.hash, a.seq - 1, 0, false, clock_timestamp(), who, a.application_name, p_display_name,
           p_broken_seq, p_reason
      FROM batch.audit_log a WHERE a.seq = at_seq
    RETURNING * INTO result;
    RETURN result;
END $$;
REVOKE EXECUTE ON FUNCTION batch.audit_reanchor(bigint, text, text, text) FROM batch_job;

-- ---------------------------------------------------------------------------------------------------
-- 2. Full verifications, recorded; the gate a run obeys
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE batch.audit_verifications (
    id               bigserial   PRIMARY KEY,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL,
    ok               boolean     NOT NULL,
    rows_checked     bigint      NOT NULL CHECK (rows_checked >= 0),
    head_seq         bigint      NOT NULL CHECK (head_seq >= 0),
    head_hash        char(64)    NOT NULL,
    first_broken_seq bigint      CHECK (first_broken_seq >= 1),
    problem          text,
    processes        integer     NOT NULL CHECK (processes >= 1),
    anchors_checked  integer     NOT NULL CHECK (anchors_checked >= 0),
    verified_by      text        NOT NULL,
    application_name text        NOT NULL,
    display_name     text,
    audit_seq        bigint      NOT NULL,
    CHECK (ok = (first_broken_seq IS NULL)),
    CHECK ((problem IS NULL) = ok)
);
CREATE TRIGGER audit_verifications_append_only BEFORE UPDATE OR DELETE ON batch.audit_verifications
    FOR EACH ROW EXECUTE FUNCTION batch.refuse_change();
CREATE TRIGGER audit_verifications_no_truncate BEFORE TRUNCATE ON batch.audit_verifications
    FOR EACH STATEMENT EXECUTE FUNCTION batch.refuse_change();

-- Record a full verification's result (and its audit row) as the job's or an operator's login role.
CREATE FUNCTION batch.audit_record_verification(p_started_at timestamptz, p_ok boolean, p_rows bigint,
                                                p_head_seq bigint, p_head_hash text, p_first_broken_seq bigint,
                                                p_problem text, p_processes integer, p_anchors integer,
                                                p_display_name text)
RETURNS batch.audit_verifications LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    at_seq bigint;
    result batch.audit_verifications;
BEGIN
    at_seq := batch.audit_append_stamped('audit.full_verification', NULL, NULL, NULL,
        jsonb_build_object('ok', p_ok, 'rows', p_rows, 'head_seq', p_head_seq, 'head_hash', p_head_hash,
                           'first_broken_seq', p_first_broken_seq, 'problem', p_problem,
                           'processes', p_processes, 'anchors_checked', p_anchors)::text,
        p_display_name);
    INSERT INTO batch.audit_verifications (started_at, finished_at, ok, rows_checked, head_seq, head_hash,
                                           first_broken_seq, problem, processes, anchors_checked, verified_by,
                                           application_name, display_name, audit_seq)
    VALUES (p_started_at, clock_timestamp(), p_ok, p_rows, p_head_seq, p_head_hash, p_first_broken_seq, p_problem,
            p_processes, p_anchors, session_user, coalesce(current_setting('application_name', true), ''),
            p_display_name, at_seq)
    RETURNING * INTO result;
    RETURN result;
END $$;
REVOKE ALL ON FUNCTION batch.audit_record_verification(timestamptz, boolean, bigint, bigint, text, bigint, text,
                                                       integer, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batch.audit_record_verification(timestamptz, boolean, bigint, bigint, text, bigint, text,
                                                          integer, integer, text) TO batch_job, batch_operator;

GRANT SELECT ON batch.audit_actions, batch.audit_verifications TO batch_job, batch_operator;
