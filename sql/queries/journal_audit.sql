-- The audit log: append (seq, time, prev_hash and hash are assigned by the database trigger, whatever
-- is sent here), read the chain in order, read the head.

-- name: append
INSERT INTO batch.audit_log (seq, at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash, hash)
VALUES (0, now(), :actor, :action, :run_id, :payout_id, :portfolio_id, :details, '', '')

-- name: chain_after
SELECT seq, at, actor, action, run_id, payout_id, portfolio_id, details, prev_hash, hash
  FROM batch.audit_log
 WHERE seq > :after
 ORDER BY seq
 LIMIT :n

-- name: head
SELECT seq, hash FROM batch.audit_log ORDER BY seq DESC LIMIT 1
