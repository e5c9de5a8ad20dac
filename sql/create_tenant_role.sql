-- The role the application connects as: what op.create_tenant_role runs (needs CREATEROLE).
--
--   psql -v role=app -f sql/create_tenant_role.sql
--   psql -c "ALTER ROLE app PASSWORD '...'"      -- or \password app
--
-- Row-level security binds it: not a superuser, no BYPASSRLS, and it cannot make roles or
-- databases. An existing role of that name is kept, unless it is a superuser or has BYPASSRLS.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'role')
\gexec

-- An existing role that escapes row level security is an error, not silently accepted.
SELECT format('DO $pgtenancy$ BEGIN RAISE EXCEPTION USING MESSAGE = %L; END $pgtenancy$',
              'role ' || :'role' || ' is a superuser or has BYPASSRLS: row level security would not bind it')
  FROM pg_catalog.pg_roles WHERE rolname = :'role' AND (rolsuper OR rolbypassrls)
\gexec
