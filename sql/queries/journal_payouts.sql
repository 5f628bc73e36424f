-- Payouts: claiming with a lease, the step functions (intent and outcome, migration 0003), guarded
-- transitions for stops, listings.

-- name: claim
-- lease up to :n executable payouts nobody else holds; the NOT IN is payouts_claimable's predicate (0018),
-- word for word, so the oldest come from that index instead of a sort of every open payout at each claim
UPDATE batch.payouts
   SET lease_owner = :worker, lease_expires_at = now() + make_interval(secs => :lease)
 WHERE id IN (SELECT id FROM batch.payouts
               WHERE state NOT IN ('COMPLETED', 'CANCELLED', 'MOVE_REVERSED', 'HELD', 'NEEDS_ATTENTION')
                 AND state = ANY(:states)
                 AND flow = ANY(:flows)
                 AND (lease_expires_at IS NULL OR lease_expires_at < now())
                 AND (CAST(:portfolio_ids AS text[]) IS NULL OR portfolio_id = ANY(CAST(:portfolio_ids AS text[])))
                 AND (CAST(:run_id AS uuid) IS NULL OR run_id = CAST(:run_id AS uuid))
                 AND stalled_run_id IS DISTINCT FROM CAST(:not_stalled_in AS uuid)
               ORDER BY created_at, id
               LIMIT :n
               FOR UPDATE SKIP LOCKED)
RETURNING *

-- name: release_lease
UPDATE batch.payouts SET lease_owner = NULL, lease_expires_at = NULL WHERE id = :id AND lease_owner = :worker

-- name: get
SELECT * FROM batch.payouts WHERE id = :id

-- name: attempts_by_step
-- all attempts decide whether to read back first; only this run's failed ones (a recorded transient or
-- permanent error) count against the cap: an intent a crash cut off is not a failure
SELECT payout_id, step, count(*) AS n,
       count(*) FILTER (WHERE run_id = :run_id AND outcome IN ('TRANSIENT_ERROR', 'PERMANENT_ERROR')) AS failed
  FROM batch.step_attempts
 WHERE payout_id = ANY(:ids)
 GROUP BY payout_id, step

-- name: step_begin
SELECT batch.step_begin(:payout_id, :state, :worker, :lease, :run_id, :step, CAST(:intent AS jsonb),
                        CAST(:updates AS jsonb))

-- name: step_finish
SELECT * FROM batch.step_finish(:attempt_id, :outcome, CAST(:detail AS jsonb), :payout_id, :from_state, :worker,
                                CAST(:through AS text[]), CAST(:updates AS jsonb), :note, :actor, :action, :run_id,
                                :portfolio_id, :audit)

-- name: intent_of
SELECT intent FROM batch.step_attempts WHERE id = :id

-- name: close_attempt
UPDATE batch.step_attempts SET outcome = :outcome, outcome_at = now(), detail = CAST(:detail AS jsonb)
 WHERE id = :id AND outcome IS NULL

-- name: transition
-- a stop (NEEDS_ATTENTION, CANCELLED), guarded by the state it expects (and the lease, when a worker
-- makes it); the lease is always released. Operators' actions are SQL functions (journal_oversight.sql).
UPDATE batch.payouts p
   SET state            = CAST(:to_state AS text),
       updated_at       = now(),
       lease_owner      = NULL,
       lease_expires_at = NULL,
       failing_step     = coalesce(CAST(:failing_step AS text), p.failing_step),
       last_error       = coalesce(CAST(:last_error AS text), p.last_error),
       stopped_in_state = CASE WHEN :to_state = 'NEEDS_ATTENTION' THEN p.state ELSE p.stopped_in_state END,
       stopped_at       = CASE WHEN :to_state IN ('NEEDS_ATTENTION', 'CANCELLED') THEN now() ELSE p.stopped_at END
 WHERE p.id = :id AND p.state = :from_state AND (CAST(:worker AS text) IS NULL OR p.lease_owner = :worker)
RETURNING p.*

-- name: stall
-- the payout keeps its state; this run stops claiming it, the next run resumes it
UPDATE batch.payouts
   SET stalled_run_id = :run_id, stalled_at = now(), last_error = :error, failing_step = :step,
       lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE id = :id AND state = :state AND lease_owner = :worker
RETURNING *

-- name: count_stalled_in_run
SELECT count(*) FROM batch.payouts WHERE stalled_run_id = :run_id AND state = ANY(:states)

-- name: list_in_states
SELECT * FROM batch.payouts WHERE state = ANY(:states) ORDER BY created_at, id LIMIT :n

-- name: count_open_of_run
SELECT count(*) FROM batch.payouts WHERE run_id = :run_id AND state = ANY(:states)

-- name: count_by_state
SELECT state, count(*) AS n FROM batch.payouts WHERE state = ANY(:states) GROUP BY state

-- name: check_fence
-- a claim by a fenced run (its lease taken over) is refused (BJ003) in the claim's transaction
SELECT batch.check_fence(CAST(:run_id AS uuid))

-- name: release_leases_of
-- the leases of processes known to be gone (a planner's worker that exited): released at once
UPDATE batch.payouts SET lease_owner = NULL, lease_expires_at = NULL
 WHERE lease_owner = ANY(:owners)
RETURNING id

-- name: held_elsewhere
-- open operations this run could not claim: leased (live lease) by another process, of any run and flow
SELECT id, run_id, flow, portfolio_id, state, lease_owner, lease_expires_at
  FROM batch.payouts
 WHERE state = ANY(:states) AND lease_owner IS NOT NULL AND lease_owner <> ALL(:mine)
   AND lease_expires_at > now()
 ORDER BY created_at, id

-- name: in_flight_of_run
-- what an interrupted run leaves on its way: the open payouts it planned or drove, per state
SELECT p.state, count(*) AS n, coalesce(sum(p.amount), 0) AS amount,
       count(*) FILTER (WHERE p.ledger_posted_at IS NOT NULL OR p.ledger_moved_at IS NOT NULL) AS moved
  FROM batch.payouts p
 WHERE p.state = ANY(:states)
   AND (p.run_id = :run_id OR p.id IN (SELECT a.payout_id FROM batch.step_attempts a WHERE a.run_id = :run_id))
 GROUP BY p.state
 ORDER BY p.state
