-- Leases with fencing tokens (migration 0012): the nightly run's and each listener instance's right to run.

-- name: ensure
-- a released placeholder, so that contenders always find a row to lock (never two INSERTs racing)
INSERT INTO batch.leases (name, token, host, pid, expires_at, released_at)
VALUES (:name, nextval('batch.lease_tokens'), :host, :pid, now(), now())
ON CONFLICT (name) DO NOTHING

-- name: row_for_update
-- the lease, locked for this transaction, with its holder run's status and the facts to judge it by
SELECT l.run_id, l.host, l.pid, l.token, l.expires_at, l.lock_epoch, l.released_at IS NOT NULL AS released,
       r.status AS run_status, now() AS db_now, pg_postmaster_start_time() AS server_epoch
  FROM batch.leases l
  LEFT JOIN batch.runs r ON r.id = l.run_id
 WHERE l.name = :name
   FOR UPDATE OF l

-- name: row
SELECT l.run_id, l.host, l.pid, l.token, l.expires_at, l.lock_epoch, l.released_at IS NOT NULL AS released,
       r.status AS run_status, now() AS db_now, pg_postmaster_start_time() AS server_epoch
  FROM batch.leases l
  LEFT JOIN batch.runs r ON r.id = l.run_id
 WHERE l.name = :name

-- name: try_lock
SELECT pg_try_advisory_lock(hashtext(:name))

-- name: unlock
SELECT pg_advisory_unlock(hashtext(:name))

-- name: fence_run
-- the old holder's run can change nothing more (batch.check_fence); a RUNNING one is ABANDONED
UPDATE batch.runs
   SET fenced_at = coalesce(fenced_at, now()),
       status = CASE WHEN status = 'RUNNING' THEN 'ABANDONED' ELSE status END,
       finished_at = CASE WHEN status = 'RUNNING' THEN now() ELSE finished_at END,
       error = CASE WHEN status = 'RUNNING' THEN coalesce(error, :reason) ELSE error END
 WHERE id = :id
RETURNING id

-- name: take
UPDATE batch.leases
   SET run_id = :run_id, token = nextval('batch.lease_tokens'), host = :host, pid = :pid,
       lock_epoch = pg_postmaster_start_time(), acquired_at = now(), heartbeat_at = now(),
       expires_at = now() + make_interval(secs => :ttl), released_at = NULL
 WHERE name = :name
RETURNING token

-- name: renew
-- the heartbeat: only the holder of this token renews; lock_epoch says it holds the session lock now
UPDATE batch.leases l
   SET heartbeat_at = now(), expires_at = now() + make_interval(secs => :ttl),
       lock_epoch = CASE WHEN :locked THEN pg_postmaster_start_time() ELSE l.lock_epoch END
 WHERE l.name = :name AND l.token = :token AND l.released_at IS NULL
   AND NOT EXISTS (SELECT 1 FROM batch.runs r WHERE r.id = l.run_id AND r.fenced_at IS NOT NULL)
RETURNING l.token

-- name: set_run
-- a listener instance's lease names its current run (runs rotate under one instance)
UPDATE batch.leases SET run_id = :run_id WHERE name = :name AND token = :token

-- name: release
UPDATE batch.leases SET released_at = now(), expires_at = now() WHERE name = :name AND token = :token

-- name: release_payout_leases
-- a nightly run's start: never a listener's lease; those of :dead_owners (processes of this host known to be
-- gone: a run that failed while its journal was away could not release its own) at once, whoever held the run
-- lease; with a take-over (:take_over) also any other holder's of the taken-over run when no step of the payout
-- is in flight (an intent without an outcome: its call may still be under way in a live process; that lease
-- runs out by itself and the payout is listed as in progress meanwhile). A finished run's other leases are its
-- live scale-out workers' own.
UPDATE batch.payouts p SET lease_owner = NULL, lease_expires_at = NULL
 WHERE p.lease_owner IS NOT NULL AND p.lease_owner NOT LIKE 'listener:%'
   AND (p.lease_owner = ANY(:dead_owners)
        OR (CAST(:take_over AS boolean)
            AND NOT EXISTS (SELECT 1 FROM batch.step_attempts a WHERE a.payout_id = p.id AND a.outcome IS NULL)))
RETURNING p.id

-- name: payout_lease_owners
-- the processes holding payout leases (not listeners): the contender judges which of them are gone
SELECT DISTINCT lease_owner FROM batch.payouts WHERE lease_owner IS NOT NULL AND lease_owner NOT LIKE 'listener:%'
