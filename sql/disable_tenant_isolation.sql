-- The exact reverse of enable_tenant_isolation.sql: what op.disable_tenant_isolation runs.
--
--   psql -v schema=public -v table=projects -v column=tenant_id -f sql/disable_tenant_isolation.sql
--
-- Only pgtenancy's own index and policy are dropped; indexes of yours stay.
\set ON_ERROR_STOP on
BEGIN;

SELECT format('DROP INDEX IF EXISTS %I.%I', :'schema', 'pgtenancy_ix_' || :'table' || '_' || :'column')
\gexec
DROP POLICY IF EXISTS pgtenancy_tenant_isolation ON :"schema".:"table";
ALTER TABLE :"schema".:"table" NO FORCE ROW LEVEL SECURITY;
ALTER TABLE :"schema".:"table" DISABLE ROW LEVEL SECURITY;

COMMIT;
