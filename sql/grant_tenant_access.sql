-- Access for the application's role to one tenant table: what op.grant_tenant_access runs.
--
--   psql -v role=app -v schema=public -v table=projects -f sql/grant_tenant_access.sql
--
-- The role also needs USAGE on the schema (GRANT USAGE ON SCHEMA public TO app).
\set ON_ERROR_STOP on
BEGIN;

GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE :"schema".:"table" TO :"role";
-- TRUNCATE and REFERENCES ignore row level security; TRIGGER lets the role run code on others' rows.
REVOKE TRUNCATE, REFERENCES, TRIGGER ON TABLE :"schema".:"table" FROM :"role";

-- USAGE on the sequences of the table's serial and identity columns.
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', d.objid::regclass, :'role')
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.refobjid = pg_catalog.to_regclass(format('%I.%I', :'schema', :'table')) AND d.deptype IN ('a', 'i')
\gexec

COMMIT;
