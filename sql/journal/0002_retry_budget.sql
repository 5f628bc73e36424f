-- An operator's retry gives a NEEDS_ATTENTION payout a fresh budget of step attempts; attempts
-- made before it still count for the read-back (an earlier attempt's outcome may be unknown).
ALTER TABLE batch.payouts ADD COLUMN retried_at timestamptz;
