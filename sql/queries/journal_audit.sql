-- The audit log: append (through batch.audit_append: seq, time, prev_hash, hash, the login role and the
-- application name are the database's, whatever is sent here), read the chain in order, read the head,
-- verified checkpoints (migration 0005).

-- name: append
-- display_name: who the client says acts (--operator / $BATCH_OPERATOR); kept beside the stamped role
SELECT batch.audit_append(:action, :run_id, :payout_id, :portfolio_id, :details, :display_name)

-- name: chain_between
-- rows after seq :after up to seq :until, as the verifier reads them (at as UTC text, ids as text)
SELECT seq, hash_version, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at, actor,
       application_name, display_name, action, run_id::text, payout_id::text, portfolio_id, details, prev_hash, hash
  FROM batch.audit_log
 WHERE seq > :after AND seq <= :until
 ORDER BY seq
 LIMIT :n

-- name: head
SELECT seq, hash FROM batch.audit_log ORDER BY seq DESC LIMIT 1

-- name: hashes_at
-- the hash, prev_hash and hash version each of these seqs carries now
SELECT seq, hash, prev_hash, hash_version FROM batch.audit_log WHERE seq = ANY(:seqs)

-- name: latest_checkpoint_until
-- the newest checkpoint at or below :until (the last row the anchors still vouch for)
SELECT id, seq, hash, verified_at, verified_by, accepted_break_seq, reason
  FROM batch.audit_checkpoints WHERE seq <= :until ORDER BY seq DESC, id DESC LIMIT 1

-- name: checkpoints
SELECT id, seq, hash, verified_at, verified_by, accepted_break_seq, reason FROM batch.audit_checkpoints ORDER BY seq, id

-- name: record_checkpoint
SELECT batch.audit_checkpoint(:seq, :hash, :from_seq, :rows, :full_chain, :display_name)

-- name: reanchor
-- a person accepts the first broken row after an investigation (migration 0005)
SELECT * FROM batch.audit_reanchor(:broken_seq, :problem, :reason, :display_name)

-- name: last_finished_run
SELECT id FROM batch.runs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1

-- name: record_verification
-- a full verification's result, and its audit row (migration 0014)
SELECT id FROM batch.audit_record_verification(:started_at, :ok, :rows, :head_seq, :head_hash, :first_broken_seq,
                                               :problem, :processes, :anchors, :display_name)

-- name: failed_full_verification
-- the latest failed full verification, unless an operator re-anchored after it (then money may move again)
SELECT v.finished_at, v.verified_by, v.first_broken_seq, v.problem
  FROM batch.audit_verifications v
 WHERE NOT v.ok
   AND NOT EXISTS (SELECT 1 FROM batch.audit_checkpoints c
                    WHERE c.accepted_break_seq IS NOT NULL AND c.verified_at > v.finished_at)
 ORDER BY v.id DESC
 LIMIT 1
