-- The job's own journal: runs, decisions, payouts, step attempts and the audit log.

CREATE TABLE batch.runs (
    id                  uuid        PRIMARY KEY,
    business_date       date        NOT NULL,
    trigger             text        NOT NULL CHECK (trigger IN ('cron', 'manual', 'scheduler', 'operator', 'worker', 'test')),
    operator            text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'SUCCEEDED_WITH_EXCEPTIONS', 'FAILED', 'ABANDONED')),
    exit_code           integer     CHECK (exit_code IN (0, 1, 2, 3, 75)),
    dry_run             boolean     NOT NULL DEFAULT false,
    parameters          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    software_version    text        NOT NULL,
    config_digest       text        NOT NULL,
    host                text        NOT NULL,
    pid                 integer     NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),
    -- set once every candidate has its decision: scale-out workers start claiming from then on
    planned_at          timestamptz,
    finished_at         timestamptz,
    summary             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error               text,
    CHECK ((status = 'RUNNING') = (finished_at IS NULL))
);
CREATE INDEX runs_by_date ON batch.runs (business_date, started_at);

-- One decision per candidate portfolio per run. ``decision``/``reason`` are what the planner
-- decided; ``final_decision``/``final_reason`` are set when execution revised it (e.g. a PAY whose
-- balance moved under us becomes DEFER/BALANCE_CHANGED).
CREATE TABLE batch.decisions (
    id                  bigserial   PRIMARY KEY,
    run_id              uuid        NOT NULL REFERENCES batch.runs (id),
    business_date       date        NOT NULL,
    portfolio_id        text        NOT NULL CHECK (length(portfolio_id) BETWEEN 1 AND 64),
    decision            text        NOT NULL CHECK (decision IN ('PAY', 'DEFER', 'SKIP', 'HOLD')),
    reason              text        NOT NULL,
    final_decision      text        CHECK (final_decision IN ('PAY', 'DEFER', 'SKIP', 'HOLD')),
    final_reason        text,
    currency            text,
    requested_raw       text,
    requested_amount    numeric(38, 8) CHECK (requested_amount IS NULL OR requested_amount >= 0),
    full_withdrawal     boolean     NOT NULL DEFAULT false,
    ledger_account      text,
    ledger_available    numeric(38, 8),
    investsuite_cash    numeric(38, 8),
    pay_amount          numeric(38, 8) CHECK (pay_amount IS NULL OR pay_amount > 0),
    reconciliation_break boolean    NOT NULL DEFAULT false,
    payout_id           uuid,
    dry_run             boolean     NOT NULL DEFAULT false,
    details             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, portfolio_id),
    CHECK ((decision = 'PAY') = (pay_amount IS NOT NULL))
);
CREATE INDEX decisions_by_date ON batch.decisions (business_date, portfolio_id);

CREATE TABLE batch.payouts (
    id                  uuid        PRIMARY KEY,
    portfolio_id        text        NOT NULL,
    business_date       date        NOT NULL,
    run_id              uuid        NOT NULL REFERENCES batch.runs (id),
    decision_id         bigint      NOT NULL REFERENCES batch.decisions (id),
    state               text        NOT NULL CHECK (state IN ('PLANNED', 'HELD', 'LEDGER_POSTED', 'TRANSACTION_RECORDED',
                                        'DIVEST_CLEARED', 'HOLDINGS_UPDATED', 'EVENT_SENT', 'COMPLETED', 'CANCELLED', 'NEEDS_ATTENTION')),
    -- the state a NEEDS_ATTENTION payout was in when it stopped (retry resumes from there)
    stopped_in_state    text,
    currency            char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount              numeric(38, 8) NOT NULL CHECK (amount > 0),
    full_withdrawal     boolean     NOT NULL,
    ledger_account      text        NOT NULL,
    counter_account     text        NOT NULL,
    cash_snapshot       numeric(38, 8) NOT NULL CHECK (cash_snapshot >= 0),
    divest_snapshot     text        NOT NULL,
    hold_reason         text,
    approved_by         text,
    approved_at         timestamptz,
    approval_reason     text,
    ledger_reference    text,
    transaction_id      text,
    divest_target       text,
    holdings_base_cash  numeric(38, 8),
    holdings_target_cash numeric(38, 8),
    event_status        integer,
    failing_step        text,
    last_error          text,
    attempts            integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_owner         text,
    lease_expires_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    ledger_posted_at    timestamptz,
    transaction_recorded_at timestamptz,
    divest_cleared_at   timestamptz,
    holdings_updated_at timestamptz,
    event_sent_at       timestamptz,
    completed_at        timestamptz,
    -- when it last stopped (NEEDS_ATTENTION or CANCELLED): lets a report show the state as of any time
    stopped_at          timestamptz,
    CHECK (state NOT IN ('LEDGER_POSTED', 'TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED', 'EVENT_SENT', 'COMPLETED')
           OR ledger_reference IS NOT NULL),
    CHECK (state NOT IN ('TRANSACTION_RECORDED', 'DIVEST_CLEARED', 'HOLDINGS_UPDATED', 'EVENT_SENT', 'COMPLETED')
           OR transaction_id IS NOT NULL)
);
-- at most one open payout per portfolio
CREATE UNIQUE INDEX payouts_one_open_per_portfolio ON batch.payouts (portfolio_id)
    WHERE state NOT IN ('COMPLETED', 'CANCELLED');
CREATE INDEX payouts_open ON batch.payouts (state, created_at) WHERE state NOT IN ('COMPLETED', 'CANCELLED');
CREATE INDEX payouts_by_date ON batch.payouts (business_date);
ALTER TABLE batch.decisions ADD CONSTRAINT decisions_payout_fk FOREIGN KEY (payout_id) REFERENCES batch.payouts (id)
    DEFERRABLE INITIALLY DEFERRED;

-- Intent before each external call, outcome after it. An intent without an outcome means the
-- result is unknown: the next attempt reads the remote state back before acting.
CREATE TABLE batch.step_attempts (
    id                  bigserial   PRIMARY KEY,
    payout_id           uuid        NOT NULL REFERENCES batch.payouts (id),
    run_id              uuid        NOT NULL REFERENCES batch.runs (id),
    step                text        NOT NULL CHECK (step IN ('LEDGER_POST', 'RECORD_TRANSACTION', 'UPDATE_PORTFOLIO', 'SEND_EVENT')),
    intent_at           timestamptz NOT NULL DEFAULT now(),
    intent              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    outcome             text        CHECK (outcome IN ('OK', 'ADOPTED', 'TRANSIENT_ERROR', 'PERMANENT_ERROR', 'REFUSED')),
    outcome_at          timestamptz,
    detail              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CHECK ((outcome IS NULL) = (outcome_at IS NULL))
);
CREATE INDEX step_attempts_by_payout ON batch.step_attempts (payout_id, step, id);

-- Append-only, hash-chained audit log. seq and the hash are assigned by the insert trigger under a
-- transaction-level advisory lock, so the chain order is the commit order.
CREATE TABLE batch.audit_log (
    seq                 bigint      PRIMARY KEY,
    at                  timestamptz NOT NULL,
    actor               text        NOT NULL,
    action              text        NOT NULL,
    run_id              uuid,
    payout_id           uuid,
    portfolio_id        text,
    details             text        NOT NULL,
    prev_hash           char(64)    NOT NULL,
    hash                char(64)    NOT NULL UNIQUE
);

CREATE FUNCTION batch.audit_hash(prev text, seq bigint, at timestamptz, actor text, action text,
                                 run_id uuid, payout_id uuid, portfolio_id text, details text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(
        prev || '|' || seq::text || '|' ||
        to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' ||
        actor || '|' || action || '|' || coalesce(run_id::text, '') || '|' ||
        coalesce(payout_id::text, '') || '|' || coalesce(portfolio_id, '') || '|' || details,
        'UTF8')), 'hex')
$$;

CREATE FUNCTION batch.audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq  bigint;
    last_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('batch.audit_log'));
    SELECT a.seq, a.hash INTO last_seq, last_hash FROM batch.audit_log a ORDER BY a.seq DESC LIMIT 1;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, repeat('0', 64));
    NEW.at := date_trunc('microseconds', clock_timestamp());
    NEW.hash := batch.audit_hash(NEW.prev_hash, NEW.seq, NEW.at, NEW.actor, NEW.action,
                                 NEW.run_id, NEW.payout_id, NEW.portfolio_id, NEW.details);
    RETURN NEW;
END $$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON batch.audit_log
    FOR EACH ROW EXECUTE FUNCTION batch.audit_chain();

CREATE FUNCTION batch.audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'batch.audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON batch.audit_log
    FOR EACH ROW EXECUTE FUNCTION batch.audit_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON batch.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION batch.audit_refuse_change();

-- The role the job runs as in production: it may append to the audit log but never rewrite it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'batch_job') THEN
        CREATE ROLE batch_job NOLOGIN;
    END IF;
EXCEPTION
    -- roles are cluster-wide but the migration lock is per database: two databases of the same
    -- server migrated at once may both try to create it
    WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT USAGE ON SCHEMA batch TO batch_job;
GRANT SELECT, INSERT, UPDATE ON batch.runs, batch.decisions, batch.payouts, batch.step_attempts TO batch_job;
GRANT SELECT, INSERT ON batch.audit_log TO batch_job;
REVOKE UPDATE, DELETE, TRUNCATE ON batch.audit_log FROM batch_job;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA batch TO batch_job;
