-- Bus events (issue 17): InvestSuite's outbound events consumed by `batch listen`.
--
--   batch.bus_inbox           every message received, keyed by the event's id (a poison message without
--                             a usable id by the SHA-256 of its body): what it was, when it was created
--                             and received, what was done with it. A duplicate id is counted on the row
--                             and dropped; an event older than the last one handled for its portfolio
--                             (same kind) is recorded STALE and ignored.
--   batch.portfolio_registry  the link InvestSuite announces with `portfolios.creation` (portfolio id,
--                             external id, owner), for the account mapping and the reconciliation.
--   runs.trigger 'listener'   the long-lived run rows the listener plans and executes under.

ALTER TABLE batch.runs DROP CONSTRAINT runs_trigger_check;
ALTER TABLE batch.runs ADD CONSTRAINT runs_trigger_check
    CHECK (trigger IN ('cron', 'manual', 'scheduler', 'operator', 'worker', 'test', 'listener'));

CREATE TABLE batch.bus_inbox (
    event_id            text        PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    bus                 text        NOT NULL CHECK (bus IN ('rabbitmq', 'mqtt', 'kafka', 'nats')),
    subject             text,
    action              text,
    -- creation | status-update | withdrawal | funding | removal; NULL when not understood
    kind                text,
    portfolio_id        text,
    -- the event's own creation time (the envelope's `created`), and ours
    created             timestamptz,
    received_at         timestamptz NOT NULL DEFAULT now(),
    handled_at          timestamptz,
    status              text        NOT NULL
                        CHECK (status IN ('RECEIVED', 'HANDLED', 'STALE', 'IGNORED', 'DEAD_LETTERED', 'FAILED')),
    outcome             text,
    -- deliveries that started handling it (a redelivery after a crash is handled again)
    attempts            integer     NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    -- deliveries of an id already handled: recorded here and dropped
    duplicates          integer     NOT NULL DEFAULT 0 CHECK (duplicates >= 0),
    last_duplicate_at   timestamptz,
    run_id              uuid        REFERENCES batch.runs (id),
    -- the envelope's data as received (a poison message: its body as text, truncated)
    payload             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CHECK ((status = 'RECEIVED') = (handled_at IS NULL))
);
-- "the last one handled for that portfolio (same kind)"
CREATE INDEX bus_inbox_last_handled ON batch.bus_inbox (portfolio_id, kind, created DESC) WHERE status = 'HANDLED';
CREATE INDEX bus_inbox_by_received ON batch.bus_inbox (received_at);

CREATE TABLE batch.portfolio_registry (
    portfolio_id        text        PRIMARY KEY CHECK (length(portfolio_id) BETWEEN 1 AND 64),
    external_id         text,
    owner_user_id       text,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    -- the event that created the entry, and the last event that touched it
    source_event_id     text        NOT NULL,
    last_event_id       text        NOT NULL,
    status              text,
    removed_at          timestamptz
);
CREATE INDEX portfolio_registry_by_external_id ON batch.portfolio_registry (external_id);

GRANT SELECT, INSERT, UPDATE ON batch.bus_inbox, batch.portfolio_registry TO batch_job;
