-- Who acts, and operators' actions on payouts (migration 0005). The functions check who the login role
-- is, the reason and, for approvals, the four-eyes rule; each returns a batch.operator_outcome.

-- name: whoami
SELECT session_user AS login_role, current_user AS current_role,
       coalesce(current_setting('application_name', true), '') AS application_name,
       coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = session_user), false) AS superuser,
       pg_has_role(session_user, 'batch_job', 'MEMBER') AS member_of_job,
       pg_has_role(session_user, 'batch_operator', 'MEMBER') AS member_of_operator

-- name: approve
SELECT * FROM batch.payout_approve(:payout_id, :reason, :display_name)

-- name: retry
SELECT * FROM batch.payout_retry(:payout_id, :reason, :display_name)

-- name: cancel
SELECT * FROM batch.payout_cancel(:payout_id, :reason, :display_name)

-- name: set_approval_policy
-- the four-eyes thresholds the job runs with (currency -> amount as a string); audited when they change
SELECT batch.set_approval_policy(CAST(:thresholds AS jsonb), :run_id, :display_name)

-- name: approvals_of
SELECT approver, display_name, application_name, reason, required, approved_at
  FROM batch.payout_approvals WHERE payout_id = :payout_id ORDER BY id
