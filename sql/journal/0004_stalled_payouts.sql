-- A payout whose step only ever failed transiently (5xx, timeouts, a ledger outage) is not parked for a
-- person once a run's attempt budget is spent: it is stalled for that run (left in its state, alerted)
-- and the next run resumes it. Claims skip payouts stalled in the claiming run.
ALTER TABLE batch.payouts ADD COLUMN stalled_run_id uuid;
ALTER TABLE batch.payouts ADD COLUMN stalled_at timestamptz;

-- The job's role reads the migrations table (it checks the schema is current before a run).
GRANT SELECT ON batch.schema_migrations TO batch_job;
