-- Bus events: the inbox, the portfolio registry, the listener's runs (migration 0008).

-- name: receive
-- a first delivery inserts the row; a later one increments attempts (still RECEIVED: a crash cut the
-- handling off) or duplicates (already finished); the row as it is afterwards, and whether it is new
INSERT INTO batch.bus_inbox AS i (event_id, bus, subject, action, kind, portfolio_id, created, status, payload)
VALUES (:event_id, :bus, :subject, :action, :kind, :portfolio_id, :created, 'RECEIVED', CAST(:payload AS jsonb))
ON CONFLICT (event_id) DO UPDATE
   SET attempts = i.attempts + CASE WHEN i.status = 'RECEIVED' THEN 1 ELSE 0 END,
       duplicates = i.duplicates + CASE WHEN i.status = 'RECEIVED' THEN 0 ELSE 1 END,
       last_duplicate_at = CASE WHEN i.status = 'RECEIVED' THEN i.last_duplicate_at ELSE now() END
RETURNING i.status, i.attempts, i.duplicates, (i.xmax = 0) AS inserted

-- name: last_handled
-- the newest event of this kind already handled for the portfolio (the stale rule's reference); an event
-- whose creation time is unknown (NULL: the docs' placeholder) is no reference
SELECT event_id, created FROM batch.bus_inbox
 WHERE portfolio_id = :portfolio_id AND kind = :kind AND status = 'HANDLED' AND event_id <> :event_id
   AND created IS NOT NULL
 ORDER BY created DESC
 LIMIT 1

-- name: finish
UPDATE batch.bus_inbox
   SET status = :status, outcome = :outcome, handled_at = now(), run_id = :run_id
 WHERE event_id = :event_id AND status = 'RECEIVED'

-- name: dead_letter
-- a poison message: recorded once with its reason (a redelivery of the same body counts as a duplicate)
INSERT INTO batch.bus_inbox AS i (event_id, bus, status, outcome, handled_at, payload)
VALUES (:event_id, :bus, 'DEAD_LETTERED', :reason, now(), CAST(:payload AS jsonb))
ON CONFLICT (event_id) DO UPDATE
   SET duplicates = i.duplicates + 1, last_duplicate_at = now()
RETURNING (i.xmax = 0) AS inserted

-- name: get
SELECT * FROM batch.bus_inbox WHERE event_id = :event_id

-- name: register
-- portfolios.creation: the link between InvestSuite's portfolio and the bank's records
INSERT INTO batch.portfolio_registry AS r (portfolio_id, external_id, owner_user_id, source_event_id, last_event_id)
VALUES (:portfolio_id, :external_id, :owner_user_id, :event_id, :event_id)
ON CONFLICT (portfolio_id) DO UPDATE
   SET external_id = coalesce(EXCLUDED.external_id, r.external_id),
       owner_user_id = coalesce(EXCLUDED.owner_user_id, r.owner_user_id),
       last_seen_at = now(), last_event_id = EXCLUDED.last_event_id
RETURNING (r.xmax = 0) AS inserted

-- name: registry_touch
-- a status update or a removal: known portfolios keep their link, unknown ones get a row without one
INSERT INTO batch.portfolio_registry AS r (portfolio_id, external_id, source_event_id, last_event_id, status,
                                           removed_at)
VALUES (:portfolio_id, :external_id, :event_id, :event_id, :status,
        CASE WHEN CAST(:removed AS boolean) THEN now() END)
ON CONFLICT (portfolio_id) DO UPDATE
   SET external_id = coalesce(r.external_id, EXCLUDED.external_id),
       status = coalesce(EXCLUDED.status, r.status),
       removed_at = CASE WHEN CAST(:removed AS boolean) THEN coalesce(r.removed_at, now()) ELSE r.removed_at END,
       last_seen_at = now(), last_event_id = EXCLUDED.last_event_id

-- name: registry_by_portfolio
SELECT * FROM batch.portfolio_registry WHERE portfolio_id = :portfolio_id

-- name: registry_by_external_id
SELECT * FROM batch.portfolio_registry WHERE external_id = :external_id ORDER BY first_seen_at

-- name: open_payout
-- the portfolio's open withdrawal (at most one: partial unique index)
SELECT * FROM batch.payouts
 WHERE portfolio_id = :portfolio_id AND flow = 'WITHDRAWAL' AND state NOT IN ('COMPLETED', 'CANCELLED')

-- name: latest_payout
SELECT * FROM batch.payouts
 WHERE portfolio_id = :portfolio_id AND flow = 'WITHDRAWAL'
 ORDER BY created_at DESC, id DESC
 LIMIT 1

-- name: decision_in_run
SELECT d.decision, d.reason, d.final_decision, d.final_reason, d.payout_id, d.details
  FROM batch.decisions d
 WHERE d.run_id = :run_id AND d.portfolio_id = :portfolio_id AND d.flow = 'WITHDRAWAL'

-- name: listener_runs
-- runs left RUNNING by listeners (each holds the advisory lock of its instance while it lives)
SELECT id, parameters->>'instance' AS instance, parameters->>'worker' AS worker
  FROM batch.runs
 WHERE status = 'RUNNING' AND trigger = 'listener' AND parameters->>'instance' IS DISTINCT FROM :own_instance

-- name: release_listener_lease
-- a dead instance's lease (migration 0012): should it live on, its next heartbeat finds it gone and it stops
UPDATE batch.leases SET released_at = now(), expires_at = now() WHERE name = :name

-- name: abandon_listener_run
UPDATE batch.runs
   SET status = 'ABANDONED', finished_at = now(), error = coalesce(error, 'listener process died'),
       fenced_at = coalesce(fenced_at, now())
 WHERE id = :id AND status = 'RUNNING'
RETURNING id

-- name: release_worker_leases
-- a dead listener's leases: released at once instead of after lease_seconds
UPDATE batch.payouts SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = :worker
RETURNING portfolio_id

-- name: ping
SELECT 1
