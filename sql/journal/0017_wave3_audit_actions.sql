-- The job's own actions added by the other wave-3 changes beside 0014's list (audit actions belong to roles):
-- a lease taken over from a dead holder (0012, batch/adapters/journal/leases.py) and a deposit's decision revised
-- to HOLD after InvestSuite refused an announcement for good (0011, the engine's Divert). Both are appended by the
-- job under its own role through batch.audit_append.
INSERT INTO batch.audit_actions (action, appended_by, note) VALUES
    ('lease.*',                 'job', 'a run or listener lease taken over from a holder found dead (fencing, 0012)'),
    ('payout.decision_revised', 'job', 'a decision revised after InvestSuite refused an announcement for good');
