-- Runs: the run lock, the run lifecycle, the run a scale-out worker works for.

-- name: try_lock
-- session advisory lock held for the whole run (it also proves the run's process is alive)
SELECT pg_try_advisory_lock(hashtext(:key))

-- name: unlock
SELECT pg_advisory_unlock(hashtext(:key))

-- name: abandon_stale
-- called under the run's lease (migration 0012): no other nightly run is alive, or it is fenced here
-- a listener's long-lived run is not the nightly run's to judge: listeners abandon their own dead ones
UPDATE batch.runs
   SET status = 'ABANDONED', finished_at = now(), error = coalesce(error, 'process died while running'),
       fenced_at = coalesce(fenced_at, now())  -- should it still live somewhere, it can change nothing more
 WHERE status = 'RUNNING' AND parameters->>'role' IS DISTINCT FROM 'worker' AND trigger <> 'listener'
RETURNING id

-- name: release_planner_leases
-- the planner leases as "{host}:{pid}:{run id hex[:8]}"; scale-out workers lease under other names
UPDATE batch.payouts p SET lease_owner = NULL, lease_expires_at = NULL
  FROM batch.runs r
 WHERE r.id = ANY(:ids)
   AND p.lease_owner = r.host || ':' || r.pid || ':' || left(replace(r.id::text, '-', ''), 8)

-- name: start
INSERT INTO batch.runs (id, business_date, trigger, operator, status, dry_run, parameters,
                        software_version, config_digest, host, pid)
VALUES (:id, :business_date, :trigger, :operator, 'RUNNING', :dry_run, CAST(:parameters AS jsonb),
        :software_version, :config_digest, :host, :pid)

-- name: finish
UPDATE batch.runs
   SET status = :status, exit_code = :exit_code, summary = CAST(:summary AS jsonb), error = :error,
       finished_at = now()
 WHERE id = :id AND status = 'RUNNING'

-- name: mark_planned
UPDATE batch.runs SET planned_at = now() WHERE id = :id

-- name: current_planned
-- the RUNNING, non-dry run whose plan is complete (what scale-out workers work for)
SELECT id FROM batch.runs
 WHERE status = 'RUNNING' AND dry_run = false AND planned_at IS NOT NULL
 ORDER BY started_at DESC
 LIMIT 1

-- name: get
SELECT * FROM batch.runs WHERE id = :id

-- name: store_audit_head
-- the chain head right after the run's own run.finished row (same transaction: the chain lock is still held)
UPDATE batch.runs r
   SET audit_head_seq = h.seq, audit_head_hash = h.hash
  FROM (SELECT seq, hash FROM batch.audit_log ORDER BY seq DESC LIMIT 1) h
 WHERE r.id = :id
