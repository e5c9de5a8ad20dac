-- Hardening: no temporary tables for the application's role: what op.revoke_temporary_tables runs.
--
--   psql -v role=app -f sql/revoke_temporary_tables.sql
--
-- Temporary tables are not protected by row level security and outlive a transaction on a pooled
-- connection. Every role holds TEMPORARY through PUBLIC, so it is revoked from PUBLIC as well: grant it
-- back by name to the roles that need it (GRANT TEMPORARY ON DATABASE ... TO reporting). The database
-- owner keeps it. Undo: GRANT TEMPORARY ON DATABASE <this database> TO PUBLIC.
\set ON_ERROR_STOP on
SELECT format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database())
\gexec
SELECT format('REVOKE TEMPORARY ON DATABASE %I FROM %I', current_database(), :'role')
\gexec
