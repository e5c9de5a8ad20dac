-- Isolate one table by its tenant column: the statements op.enable_tenant_isolation runs.
--
--   psql -v schema=public -v table=projects -v column=tenant_id -v type=uuid \
--        -v setting=app.current_tenant_id -f sql/enable_tenant_isolation.sql
--
-- psql quotes :"var" as an identifier and :'var' as a literal. :type is pasted as is and must be
-- the SQL type of the tenant ids: uuid, bigint or text (key types uuid, int, str).
-- `pgtenancy sql enable --table projects` prints the same statements filled in.
\set ON_ERROR_STOP on
BEGIN;

ALTER TABLE :"schema".:"table" ENABLE ROW LEVEL SECURITY;
-- FORCE: the table owner is bound by the policy too.
ALTER TABLE :"schema".:"table" FORCE ROW LEVEL SECURITY;

-- The policy reads the transaction's tenant once per query (the scalar subquery is an InitPlan,
-- which keeps the tenant index usable). NULLIF: a setting that was set and reset reads '', not NULL.
DROP POLICY IF EXISTS pgtenancy_tenant_isolation ON :"schema".:"table";
CREATE POLICY pgtenancy_tenant_isolation ON :"schema".:"table" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (:"column" = (SELECT CAST(NULLIF(current_setting(:'setting', true), '') AS :type)))
    WITH CHECK (:"column" = (SELECT CAST(NULLIF(current_setting(:'setting', true), '') AS :type)));

-- An index leading with the tenant column, unless a (non-partial) one exists already.
-- (pgtenancy shortens names longer than 63 bytes with a hash; this template does not.)
SELECT format('CREATE INDEX %I ON %I.%I (%I)',
              'pgtenancy_ix_' || :'table' || '_' || :'column', :'schema', :'table', :'column')
 WHERE NOT EXISTS (
       SELECT FROM pg_catalog.pg_index i
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = pg_catalog.to_regclass(format('%I.%I', :'schema', :'table'))
          AND a.attname = :'column' AND i.indpred IS NULL)
\gexec

COMMIT;
