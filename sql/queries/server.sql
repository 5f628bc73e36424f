-- The database server itself (not a schema of ours): how many more client connections it accepts now.

-- name: connection_headroom
-- max_connections less the slots reserved for superusers (and, from PostgreSQL 16, for pg_use_reserved_connections)
-- less the client backends connected now (this one included)
SELECT current_setting('max_connections')::int
       - current_setting('superuser_reserved_connections')::int
       - coalesce(current_setting('reserved_connections', true)::int, 0) AS allowed,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS in_use
