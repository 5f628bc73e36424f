-- InvestSuite-compatible sandbox (demo, tests, benchmarks only; never used in production).
-- Documents are kept as json, i.e. the exact text written (numbers keep their digits: 1E+100 stays 1E+100,
-- 1000.00 stays 1000.00); queries run on a generated jsonb copy (search_doc).

CREATE TABLE sandbox.users (
    id          text PRIMARY KEY CHECK (id ~ '^U[0-9A-HJKMNP-TV-Z]{26}$'),
    doc         json NOT NULL CHECK (json_typeof(doc) = 'object')
);

CREATE TABLE sandbox.portfolios (
    id          text PRIMARY KEY CHECK (id ~ '^P[0-9A-HJKMNP-TV-Z]{26}$'),
    doc         json NOT NULL CHECK (json_typeof(doc) = 'object'),
    search_doc  jsonb GENERATED ALWAYS AS (doc::jsonb) STORED,
    version     integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);

CREATE TABLE sandbox.transactions (
    id           text PRIMARY KEY CHECK (id ~ '^T[0-9A-HJKMNP-TV-Z]{26}$'),
    portfolio_id text NOT NULL REFERENCES sandbox.portfolios (id),
    -- deliberately NOT unique: InvestSuite does not check transaction external ids for uniqueness
    external_id  text,
    doc          json NOT NULL CHECK (json_typeof(doc) = 'object'),
    search_doc   jsonb GENERATED ALWAYS AS (doc::jsonb) STORED
);
CREATE INDEX transactions_by_portfolio ON sandbox.transactions (portfolio_id, id);

-- Idempotency-Key replay store for POST /events/{deposit,withdraw}/.
CREATE TABLE sandbox.events (
    idempotency_key text PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    body_hash       char(64) NOT NULL,
    status          integer NOT NULL,
    response        json NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Issued access and refresh tokens (kept here so they survive a sandbox restart).
CREATE TABLE sandbox.tokens (
    token       text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('access', 'refresh')),
    expires_at  timestamptz NOT NULL
);

-- The seeded scenario: which test case each portfolio stands for.
CREATE TABLE sandbox.scenario (
    portfolio_id text PRIMARY KEY REFERENCES sandbox.portfolios (id),
    case_name    text NOT NULL
);
CREATE INDEX scenario_by_case ON sandbox.scenario (case_name);

-- A JSON value read as a number: JSON numbers and numeric strings ("250.00") compare numerically,
-- anything else is NULL. Used by the query language (amounts may be stored either way).
CREATE FUNCTION sandbox.num(value jsonb) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_typeof(value) = 'number' THEN value::numeric
        WHEN jsonb_typeof(value) = 'string'
             AND (value #>> '{}') ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$'
            THEN (value #>> '{}')::numeric
    END
$$;

-- The documented pending-withdrawal query (`divest_amount neq 0 and divest_amount neq null`), exactly as
-- batch/sandbox/query.py compiles it, so deep offset pages skip rows on this index alone.
CREATE INDEX portfolios_pending_divest ON sandbox.portfolios (id)
    WHERE (NOT coalesce(sandbox.num(search_doc #> '{config,manager_settings,divest_amount}') = 0, false)
           AND coalesce(jsonb_typeof(search_doc #> '{config,manager_settings,divest_amount}'), 'null') <> 'null');
