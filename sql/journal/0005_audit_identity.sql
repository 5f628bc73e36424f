-- An audit trail an auditor can rely on (issue 15):
--   1. identity stamped by the database: every audit row carries the login role (session_user) and the
--      connection's application_name, set by the chain trigger whatever the client sends; rows are
--      appended only through batch.audit_append (SECURITY DEFINER); INSERT is revoked from every role;
--   2. hash version 2: the stamped identity and the client's display name are part of the hashed content,
--      each field length-prefixed; rows written before this migration keep hash version 1 and still verify;
--   3. verified checkpoints (batch.audit_checkpoints), written only through batch.audit_checkpoint;
--   4. four-eyes approvals: batch.payout_approvals (one row per approving login role and payout), the
--      threshold the job last recorded (batch.approval_policy), the operator functions
--      batch.payout_approve / payout_retry / payout_cancel, and a guard on batch.payouts: a HELD payout
--      leaves HELD for anything but CANCELLED only with its approvals complete.
--
-- Roles (cluster-wide; the grants below are per database):
--   batch_job       (0001) the job's processes log in as a member of it: journal writes, audit appends
--                   through audit_append, checkpoints, the approval policy. Never approves.
--   batch_operator  (here) people: each operator logs in as their own role, a member of batch_operator.
--                   Reads the journal; acts only through the payout_* functions; records checkpoints.
--   owner           the role that applies migrations owns the tables and the SECURITY DEFINER functions.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'batch_operator') THEN
        CREATE ROLE batch_operator NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- another database of the server migrated at once
END $$;

-- Errors raised here, besides the standard ones:
--   BJ001  the payout is not in a state the action applies to (the caller lost a race, or it moved on)
--   BJ002  an operator action refused: who acts, the reason given, or the four-eyes rule
--   BJ003  a checkpoint that does not match the chain

-- ---------------------------------------------------------------------------------------------------
-- 1 and 2. Identity and hash version 2
-- ---------------------------------------------------------------------------------------------------
ALTER TABLE batch.audit_log
    ADD COLUMN hash_version     smallint NOT NULL DEFAULT 1 CHECK (hash_version IN (1, 2)),
    ADD COLUMN application_name text,
    ADD COLUMN display_name     text,
    ADD CONSTRAINT audit_log_v2_identity CHECK (hash_version = 1 OR application_name IS NOT NULL);

-- One field of the version 2 hash input: '~' for NULL, else its length in characters, ':' and the text,
-- so no field can be shifted into its neighbour.
CREATE FUNCTION batch.audit_field(v text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v IS NULL THEN '~' ELSE length(v)::text || ':' || v END
$$;

-- Version 2: sha256 of 'v2' and the fields below, '|'-separated, each as batch.audit_field makes it;
-- at as UTC with microseconds ('YYYY-MM-DDTHH:MI:SS.ffffffZ'), uuids in their canonical text form.
CREATE FUNCTION batch.audit_hash_v2(prev text, seq bigint, at timestamptz, actor text, application_name text,
                                    display_name text, action text, run_id uuid, payout_id uuid,
                                    portfolio_id text, details text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(concat_ws('|', 'v2',
        batch.audit_field(prev), batch.audit_field(seq::text),
        batch.audit_field(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
        batch.audit_field(actor), batch.audit_field(application_name), batch.audit_field(display_name),
        batch.audit_field(action), batch.audit_field(run_id::text), batch.audit_field(payout_id::text),
        batch.audit_field(portfolio_id), batch.audit_field(details)), 'UTF8')), 'hex')
$$;

-- The chain trigger (replaces 0001's): seq, time, identity and hash are the database's, whatever is sent.
CREATE OR REPLACE FUNCTION batch.audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash text;
BEGIN
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

-- The only way to append for everyone but the owner. Returns the row's seq.
CREATE FUNCTION batch.audit_append(p_action text, p_run uuid, p_payout uuid, p_portfolio text, p_details text,
                                   p_display_name text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    appended bigint;
BEGIN
    INSERT INTO batch.audit_log (seq, at, actor, action, run_id, payout_id, portfolio_id, details,
                                 prev_hash, hash, display_name)
    VALUES (0, now(), session_user, p_action, p_run, p_payout, p_portfolio, p_details, '', '', p_display_name)
    RETURNING seq INTO appended;
    RETURN appended;
END $$;
REVOKE ALL ON FUNCTION batch.audit_append(text, uuid, uuid, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batch.audit_append(text, uuid, uuid, text, text, text) TO batch_job;

-- INSERT revoked from PUBLIC and from every role that holds it, the owner excepted (audit_append runs as it).
DO $$
DECLARE
    grantee text;
BEGIN
    REVOKE INSERT ON batch.audit_log FROM PUBLIC;
    FOR grantee IN
        SELECT DISTINCT r.rolname
          FROM pg_class c, aclexplode(c.relacl) acl, pg_roles r
         WHERE c.oid = 'batch.audit_log'::regclass AND acl.privilege_type = 'INSERT'
           AND acl.grantee = r.oid AND acl.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE INSERT ON batch.audit_log FROM %I', grantee);
    END LOOP;
END $$;

-- step_finish (0003) appends through audit_append; p_actor is now the client's display name.
CREATE OR REPLACE FUNCTION batch.step_finish(p_attempt bigint, p_outcome text, p_detail jsonb,
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
    PERFORM batch.audit_append(p_action, p_run, p_payout, p_portfolio, p_audit, p_actor);
    RETURN result;
END $$;

-- Refuses UPDATE, DELETE and TRUNCATE on the append-only tables added here.
CREATE FUNCTION batch.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- ---------------------------------------------------------------------------------------------------
-- 3. Verified checkpoints
-- ---------------------------------------------------------------------------------------------------
-- A verifier recomputed the chain from from_seq + 1 (0: from the first row) to seq and found it intact.
-- The next verification starts after the latest checkpoint, once that row still carries its hash.
CREATE TABLE batch.audit_checkpoints (
    id               bigserial   PRIMARY KEY,
    seq              bigint      NOT NULL CHECK (seq > 0),
    hash             char(64)    NOT NULL,
    from_seq         bigint      NOT NULL CHECK (from_seq >= 0 AND from_seq < seq),
    rows_checked     bigint      NOT NULL CHECK (rows_checked >= 0),
    full_chain       boolean     NOT NULL,
    verified_at      timestamptz NOT NULL,
    verified_by      text        NOT NULL,
    application_name text        NOT NULL,
    display_name     text,
    -- a re-anchoring (batch.audit_reanchor): a person accepted the chain's first broken row after an
    -- investigation; verification walks on from this checkpoint past it
    accepted_break_seq bigint    CHECK (accepted_break_seq BETWEEN 1 AND seq),
    reason           text        CHECK (reason ~ '\S'),
    CHECK ((accepted_break_seq IS NULL) = (reason IS NULL))
);
CREATE INDEX audit_checkpoints_by_seq ON batch.audit_checkpoints (seq DESC, id DESC);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON batch.audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION batch.refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON batch.audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION batch.refuse_change();

-- Record a checkpoint. The row at p_seq must carry p_hash; a checkpoint at or below the latest one is
-- not recorded (returns false): checkpoints only move forward.
CREATE FUNCTION batch.audit_checkpoint(p_seq bigint, p_hash text, p_from_seq bigint, p_rows bigint,
                                       p_full boolean, p_display_name text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stored text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('batch.audit_checkpoints'));
    SELECT a.hash INTO stored FROM batch.audit_log a WHERE a.seq = p_seq;
    IF stored IS DISTINCT FROM p_hash THEN
        RAISE EXCEPTION 'audit row % does not carry hash %', p_seq, p_hash USING ERRCODE = 'BJ003';
    END IF;
    IF EXISTS (SELECT 1 FROM batch.audit_checkpoints c WHERE c.seq >= p_seq) THEN
        RETURN false;
    END IF;
    INSERT INTO batch.audit_checkpoints (seq, hash, from_seq, rows_checked, full_chain, verified_at, verified_by,
                                         application_name, display_name)
    VALUES (p_seq, p_hash, p_from_seq, p_rows, p_full, clock_timestamp(), session_user,
            coalesce(current_setting('application_name', true), ''), p_display_name);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION batch.audit_checkpoint(bigint, text, bigint, bigint, boolean, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batch.audit_checkpoint(bigint, text, bigint, bigint, boolean, text)
    TO batch_job, batch_operator;

-- ---------------------------------------------------------------------------------------------------
-- 4. Four-eyes approvals
-- ---------------------------------------------------------------------------------------------------
-- The four-eyes thresholds the job last ran with ([policy] four_eyes_threshold: currency -> amount as a
-- string). Written by the job at the start of every run, through batch.set_approval_policy (audited, with the
-- run, when it changes). No row yet: every HELD payout needs two approvals (fail safe).
CREATE TABLE batch.approval_policy (
    id                  boolean     PRIMARY KEY DEFAULT true CHECK (id),
    four_eyes_threshold jsonb       NOT NULL CHECK (jsonb_typeof(four_eyes_threshold) = 'object'),
    recorded_at         timestamptz NOT NULL,
    recorded_by         text        NOT NULL,
    application_name    text        NOT NULL
);

CREATE FUNCTION batch.set_approval_policy(p_thresholds jsonb, p_run uuid, p_display_name text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    previous jsonb;
    bad      text;
BEGIN
    SELECT k INTO bad FROM jsonb_each_text(p_thresholds) AS t(k, v)
     WHERE k !~ '^[A-Z]{3}$' OR v !~ '^[0-9]+(\.[0-9]+)?$' OR v::numeric <= 0
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'four-eyes threshold for % must be a positive amount', bad USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT four_eyes_threshold INTO previous FROM batch.approval_policy WHERE id FOR UPDATE;
    IF previous IS NOT DISTINCT FROM p_thresholds THEN
        RETURN false;
    END IF;
    INSERT INTO batch.approval_policy (id, four_eyes_threshold, recorded_at, recorded_by, application_name)
    VALUES (true, p_thresholds, now(), session_user, coalesce(current_setting('application_name', true), ''))
    ON CONFLICT (id) DO UPDATE SET four_eyes_threshold = EXCLUDED.four_eyes_threshold,
        recorded_at = EXCLUDED.recorded_at, recorded_by = EXCLUDED.recorded_by,
        application_name = EXCLUDED.application_name;
    PERFORM batch.audit_append('policy.four_eyes_threshold', p_run, NULL, NULL,
                               jsonb_build_object('from', previous, 'to', p_thresholds)::text, p_display_name);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION batch.set_approval_policy(jsonb, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batch.set_approval_policy(jsonb, uuid, text) TO batch_job;

-- Approvals a HELD payout needs: 2 above its currency's threshold (or when no policy was ever recorded), else 1.
CREATE FUNCTION batch.approvals_required(p_currency text, p_amount numeric) RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN policy.thresholds IS NULL THEN 2
        WHEN NOT policy.thresholds ? p_currency THEN 1
        WHEN p_amount > (policy.thresholds ->> p_currency)::numeric THEN 2
        ELSE 1
    END
      FROM (SELECT (SELECT four_eyes_threshold FROM batch.approval_policy WHERE id) AS thresholds) policy
$$;

CREATE TABLE batch.payout_approvals (
    id               bigserial   PRIMARY KEY,
    payout_id        uuid        NOT NULL REFERENCES batch.payouts (id),
    approver         text        NOT NULL,
    display_name     text,
    application_name text        NOT NULL,
    reason           text        NOT NULL CHECK (reason ~ '\S'),
    required         integer     NOT NULL CHECK (required IN (1, 2)),
    approved_at      timestamptz NOT NULL,
    UNIQUE (payout_id, approver)
);
CREATE TRIGGER payout_approvals_append_only BEFORE UPDATE OR DELETE ON batch.payout_approvals
    FOR EACH ROW EXECUTE FUNCTION batch.refuse_change();
CREATE TRIGGER payout_approvals_no_truncate BEFORE TRUNCATE ON batch.payout_approvals
    FOR EACH STATEMENT EXECUTE FUNCTION batch.refuse_change();

-- A HELD payout moves on (other than to CANCELLED) only with its approvals complete, whoever updates it.
CREATE FUNCTION batch.payout_release_guard() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    have integer;
    need integer;
BEGIN
    SELECT count(*) INTO have FROM batch.payout_approvals WHERE payout_id = OLD.id;
    need := batch.approvals_required(OLD.currency, OLD.amount);
    IF have < need THEN
        RAISE EXCEPTION 'payout % is HELD: % of % approvals recorded', OLD.id, have, need USING ERRCODE = 'BJ002';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payouts_release_needs_approvals BEFORE UPDATE OF state ON batch.payouts
    FOR EACH ROW WHEN (OLD.state = 'HELD' AND NEW.state NOT IN ('HELD', 'CANCELLED'))
    EXECUTE FUNCTION batch.payout_release_guard();

-- Who may act on a payout: a person, i.e. a login role that is a member of batch_operator and not of
-- batch_job (a superuser is a member of every role, batch_job included). Returns the login role.
CREATE FUNCTION batch.operator_identity(p_action text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text := session_user;
BEGIN
    IF pg_has_role(who, 'batch_job', 'MEMBER') THEN
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = who) THEN
            RAISE EXCEPTION 'role % may not %: it is a superuser, and a superuser is a member of every role, batch_job included (log in with your own operator role)', who, p_action
                USING ERRCODE = 'BJ002';
        END IF;
        RAISE EXCEPTION 'role % may not %: it is a member of batch_job (the job never acts as an operator)', who, p_action
            USING ERRCODE = 'BJ002';
    END IF;
    IF NOT pg_has_role(who, 'batch_operator', 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not %: it is not a member of batch_operator', who, p_action USING ERRCODE = 'BJ002';
    END IF;
    RETURN who;
END $$;

CREATE FUNCTION batch.require_reason(p_reason text) RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_reason IS NULL OR p_reason !~ '\S' THEN
        RAISE EXCEPTION 'a reason is required (empty or blank reasons are refused)' USING ERRCODE = 'BJ002';
    END IF;
END $$;

-- After an investigation (README, "When the chain is broken"), a person accepts the chain's first broken
-- row: an audit row says who, why and which row, and a checkpoint at that audit row, marked with the
-- accepted break, is where the incremental verification starts from then on (a full verification walks on
-- from it past the accepted row). Never the job's role, never a superuser.
CREATE FUNCTION batch.audit_reanchor(p_broken_seq bigint, p_problem text, p_reason text, p_display_name text)
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
    at_seq := batch.audit_append('audit.reanchored', NULL, NULL, NULL,
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
REVOKE ALL ON FUNCTION batch.audit_reanchor(bigint, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION batch.audit_reanchor(bigint, text, text, text) TO batch_operator, batch_job;

-- What an operator function returns: the payout afterwards, the approvals so far and who acted.
CREATE TYPE batch.operator_outcome AS (
    payout_id        uuid,
    from_state       text,
    state            text,
    amount           numeric,
    currency         text,
    approvals        integer,
    required         integer,
    approvers        text[],
    acted_as         text,
    application_name text
);

CREATE FUNCTION batch.payout_approve(p_payout uuid, p_reason text, p_display_name text)
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
    need := batch.approvals_required(p.currency, p.amount);
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
    PERFORM batch.audit_append(CASE WHEN have >= need THEN 'payout.approved' ELSE 'payout.approval_recorded' END,
                               NULL, p_payout, p.portfolio_id,
                               jsonb_build_object('from', 'HELD', 'to', result.state, 'reason', p_reason,
                                                  'approval', have, 'required', need, 'approvers', to_jsonb(names),
                                                  'amount', trim_scale(p.amount)::text, 'currency', p.currency)::text,
                               p_display_name);
    RETURN result;
END $$;

CREATE FUNCTION batch.payout_retry(p_payout uuid, p_reason text, p_display_name text)
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
    PERFORM batch.audit_append('payout.retry', NULL, p_payout, p.portfolio_id,
                               jsonb_build_object('from', p.state, 'to', p.stopped_in_state, 'reason', p_reason)::text,
                               p_display_name);
    RETURN (p.id, p.state, p.stopped_in_state, p.amount, p.currency, NULL, NULL, NULL, who, app)::batch.operator_outcome;
END $$;

CREATE FUNCTION batch.payout_cancel(p_payout uuid, p_reason text, p_display_name text)
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

REVOKE ALL ON FUNCTION batch.payout_approve(uuid, text, text), batch.payout_retry(uuid, text, text),
                       batch.payout_cancel(uuid, text, text) FROM PUBLIC;
-- batch_job may call them only to be told, in words, that the job never acts as an operator
GRANT EXECUTE ON FUNCTION batch.payout_approve(uuid, text, text), batch.payout_retry(uuid, text, text),
                          batch.payout_cancel(uuid, text, text) TO batch_operator, batch_job;

-- ---------------------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------------------
GRANT SELECT ON batch.audit_checkpoints, batch.approval_policy, batch.payout_approvals TO batch_job;
GRANT USAGE ON SCHEMA batch TO batch_operator;
GRANT SELECT ON batch.runs, batch.decisions, batch.payouts, batch.step_attempts, batch.audit_log,
                batch.audit_checkpoints, batch.approval_policy, batch.payout_approvals, batch.schema_migrations
    TO batch_operator;
GRANT SELECT ON batch.schema_migrations TO batch_job;
