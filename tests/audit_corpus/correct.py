"""A correct database, set up as pgtenancy's README says, full of traps an audit may mistake for holes.

The owner role owns every table; the app role is NOSUPERUSER NOBYPASSRLS with DML grants; a BYPASSRLS
reporting role the app cannot become reads the tenant tables; TEMPORARY is revoked. Each ``Trap`` looks
like a hole and tries the exploit: it returns what got through (nothing, when the trap is safe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from pgtenancy.testing import TestDatabase
from tests.audit_corpus.case import (
    A_SECRET,
    B_SECRET,
    TENANT_A,
    TENANT_B,
    Case,
    attempt,
    bind,
    drop_own_database,
    open_case,
    own_database,
)

__all__ = ["TRAPS", "Correct", "Trap", "build_correct", "built_correct", "score_correct"]

SETTING = "current_setting('app.current_tenant_id', true)"
TEXT_PREDICATE = "tenant_id::text = " + SETTING
FUNCTION_PREDICATE = "tenant_id = (SELECT {s}.current_tenant())"


@dataclass(frozen=True)
class Trap:
    """Something that looks like a hole in the correct database, and the exploit that must fail on it.

    :param attempt: tries the exploit as the app role; returns what got through ([] when safe).
    """

    id: str
    description: str
    attempt: Callable[[Case], list[str]]


@dataclass
class Correct:
    case: Case
    gist: bool  # btree_gist was available: bookings has an EXCLUDE constraint with the tenant


def build_correct(case: Case) -> Correct:
    """The correct schema in ``case``'s schema."""
    names = case.names
    names["reporting"] = case.role("NOLOGIN BYPASSRLS")  # README: cross-tenant work, never the app's
    names["support"] = case.role("NOLOGIN")  # a role the app role is not a member of
    gist = bool(case.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'btree_gist'"))
    if gist:
        case.sql("CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA {s}", as_owner=False)
    case.sql(
        # shared reference tables: no tenant column, read-only for the app
        "CREATE TABLE {s}.countries (code text PRIMARY KEY, name text NOT NULL);"
        "INSERT INTO {s}.countries VALUES ('fr', 'France'), ('jp', 'Japan');"
        "CREATE TABLE {s}.plans (code text PRIMARY KEY, name text NOT NULL, seats int4range NOT NULL);"
        "INSERT INTO {s}.plans VALUES ('pro', 'Professional', int4range(1, 50));"
        "GRANT SELECT ON {s}.countries, {s}.plans TO {app};"
        # the tenant as a function, STABLE and SECURITY INVOKER, owned by the owner role
        "CREATE FUNCTION {s}.current_tenant() RETURNS uuid LANGUAGE sql STABLE"
        " AS $$ SELECT NULLIF(" + SETTING + ", '')::uuid $$;"
        # a SECURITY DEFINER helper with a pinned search_path that reads a shared table only
        "CREATE FUNCTION {s}.country_name(code text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp"
        " AS $$ SELECT name FROM {s}.countries WHERE countries.code = lower(country_name.code) $$;"
        "REVOKE EXECUTE ON FUNCTION {s}.country_name(text) FROM PUBLIC;"
        "GRANT EXECUTE ON FUNCTION {s}.country_name(text) TO {app};"
        "CREATE SEQUENCE {s}.invoice_number;"
        "GRANT USAGE ON SEQUENCE {s}.invoice_number TO {app}"  # nextval only: no SELECT, no last_value
    )
    # the audit trail is a tenant table too, filled by a SECURITY INVOKER trigger
    case.tenant_table("audit_trail", grants="SELECT, INSERT", seed=False)
    case.tenant_table("projects", columns="UNIQUE (tenant_id, body)", seed=False)
    case.sql(
        "CREATE FUNCTION {s}.trail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO {s}.audit_trail (tenant_id, body) VALUES (NEW.tenant_id, 'new project ' || NEW.body);"
        " RETURN NEW; END $$;"
        "CREATE TRIGGER trail AFTER INSERT ON {s}.projects FOR EACH ROW EXECUTE FUNCTION {s}.trail()"
    )
    case.seed_secrets("projects")
    case.tenant_table(
        "tasks",
        columns="project_id bigint NOT NULL, country text NOT NULL REFERENCES {s}.countries (code),"
        " FOREIGN KEY (tenant_id, project_id) REFERENCES {s}.projects (tenant_id, id)",
        seed=False,
    )
    case.seed_secrets(
        "tasks", ", project_id, country", ", (SELECT min(id) FROM {s}.projects WHERE tenant_id = :t), 'fr'"
    )
    case.tenant_table(
        "text_keyed", policy="USING (" + TEXT_PREDICATE + ") WITH CHECK (" + TEXT_PREDICATE + ")"
    )
    case.tenant_table("catalog_items", columns="sku text NOT NULL UNIQUE", grants="SELECT", seed=False)
    case.seed_secrets("catalog_items", ", sku", ", upper(:body)")
    case.tenant_table("documents", policy="USING (true) WITH CHECK (true)")
    case.sql("CREATE POLICY tenant_only ON {s}.documents AS RESTRICTIVE USING ({p}) WITH CHECK ({p})")
    case.tenant_table(
        "archive", policy="AS RESTRICTIVE USING ({p}) WITH CHECK ({p})", grants="SELECT, INSERT"
    )
    case.tenant_table("drafts", policy=None, grants="SELECT, INSERT")  # RLS on, no policy: nothing visible
    case.tenant_table("tickets")
    case.sql(
        "GRANT SELECT ON {s}.tickets TO {support};"
        "CREATE POLICY support_read ON {s}.tickets FOR SELECT TO {support} USING (true)"
    )
    case.sql(
        "CREATE TYPE {s}.priority AS ENUM ('low', 'high');"
        "CREATE DOMAIN {s}.sku AS text CHECK (VALUE ~ '^[A-Z]{{3}}-[0-9]{{4}}$')"
    )
    case.tenant_table(
        "bookings",
        columns="during tstzrange NOT NULL, seats int4range NOT NULL, priority {s}.priority NOT NULL,"
        " sku {s}.sku NOT NULL, tags text[] NOT NULL CHECK (cardinality(tags) > 0),"
        " attrs jsonb NOT NULL CHECK (attrs ? 'kind'), total numeric(12, 2) NOT NULL,"
        " total_cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED,"
        " number bigint GENERATED ALWAYS AS IDENTITY"
        + (", EXCLUDE USING gist (tenant_id WITH =, during WITH &&)" if gist else ""),
        seed=False,
    )
    case.seed_secrets("bookings", BOOKING_COLUMNS, BOOKING_VALUES)
    case.tenant_table(
        "invoices", columns="number bigint NOT NULL DEFAULT nextval('{s}.invoice_number')", seed=False
    )
    case.seed_secrets("invoices")
    case.tenant_table(
        "notes",
        policy="USING (" + FUNCTION_PREDICATE + ") WITH CHECK (" + FUNCTION_PREDICATE + ")",
    )
    case.sql(
        "CREATE TABLE {s}.events (id bigint GENERATED BY DEFAULT AS IDENTITY, tenant_id uuid NOT NULL,"
        " body text NOT NULL, PRIMARY KEY (tenant_id, id)) PARTITION BY HASH (tenant_id);"
        "CREATE TABLE {s}.events_0 PARTITION OF {s}.events FOR VALUES WITH (MODULUS 2, REMAINDER 0);"
        "CREATE TABLE {s}.events_1 PARTITION OF {s}.events FOR VALUES WITH (MODULUS 2, REMAINDER 1);"
        "ALTER TABLE {s}.events ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.events FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY tenant_isolation ON {s}.events USING ({p}) WITH CHECK ({p});"
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.events TO {app}"  # the parent only
    )
    case.seed_secrets("events")
    case.sql(
        "CREATE VIEW {s}.project_names WITH (security_invoker = true)"
        " AS SELECT tenant_id, body FROM {s}.projects;"
        # owned by the owner role, on a table whose RLS is forced: the policy binds the view's reads too
        "CREATE VIEW {s}.my_projects AS SELECT tenant_id, body FROM {s}.projects;"
        "GRANT SELECT ON {s}.project_names, {s}.my_projects TO {app}"
    )
    case.sql(
        # a reporting snapshot of every tenant, for the reporting role only
        "CREATE MATERIALIZED VIEW {s}.tenant_totals AS"
        " SELECT tenant_id, count(*) AS projects, string_agg(body, ',') AS bodies"
        " FROM {s}.projects GROUP BY 1;"
        "ALTER MATERIALIZED VIEW {s}.tenant_totals OWNER TO {reporting};"
        "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {reporting}",  # README: admin work as a BYPASSRLS role
        as_owner=False,
    )
    return Correct(case, gist)


BOOKING_COLUMNS = ", during, seats, priority, sku, tags, attrs, total"


def booking_values(during: str) -> str:
    """The SQL values of BOOKING_COLUMNS, ``during`` given."""
    return (
        ", " + during + ", int4range(1, 4), 'high', 'ABC-0001', ARRAY['x'], '{{\"kind\": \"booking\"}}', 12.5"
    )


# A books 09:00, B 14:00, on 2030-01-02 and 2030-01-03
SEED_START = (
    "TIMESTAMPTZ '2030-01-01 00:00+00' + make_interval(days => right(:body, 1)::int,"
    " hours => CASE WHEN CAST(:t AS uuid) = '{a}' THEN 9 ELSE 14 END)"
)
BOOKING_VALUES = booking_values("tstzrange(" + SEED_START + ", " + SEED_START + " + interval '1 hour')")
B_HOUR = "tstzrange(TIMESTAMPTZ '2030-01-02 14:00+00', TIMESTAMPTZ '2030-01-02 15:00+00')"
FREE_HOUR = "tstzrange(TIMESTAMPTZ '2030-02-01 14:00+00', TIMESTAMPTZ '2030-02-01 15:00+00')"


# ----------------------------------------------------------------------------- what must fail


def _rows(conn: Connection, case: Case, sql: str, parameters: dict[str, Any] | None = None) -> str:
    return repr(attempt(conn, case.fill(sql), parameters))


def _shows_b(conn: Connection, case: Case, sql: str, what: str) -> list[str]:
    """[what got through] if the query shows tenant B's data, else []."""
    rows = _rows(conn, case, sql)
    return [what + ": " + rows[:300]] if B_SECRET in rows else []


def _refused(
    conn: Connection, case: Case, sql: str, what: str, parameters: dict[str, Any] | None = None
) -> list[str]:
    """[] if the statement is refused with an error, else [what got through]."""
    done = attempt(conn, case.fill(sql), parameters)
    return [] if isinstance(done, str) else [what + ": " + repr(done)[:300]]


def _read_as_a(table: str) -> Callable[[Case], list[str]]:
    def exploit(case: Case) -> list[str]:
        with case.as_tenant(TENANT_A) as conn:
            return _shows_b(conn, case, "SELECT * FROM {s}." + table, "A read B's rows of " + table)

    return exploit


def canonical_unbound(case: Case) -> list[str]:
    with case.connect_app() as conn:
        got = _shows_b(conn, case, "SELECT * FROM {s}.projects", "never bound")
        bind(conn, TENANT_A)
        conn.commit()
        got += _shows_b(conn, case, "SELECT * FROM {s}.projects", "after A committed ('')")
        got += _refused(
            conn,
            case,
            "INSERT INTO {s}.projects (tenant_id, body) VALUES (:b, 'x')",
            "unbound insert",
            {"b": TENANT_B},
        )
    return got


def text_cast_policy(case: Case) -> list[str]:
    got = _read_as_a("text_keyed")(case)
    with case.connect_app() as conn:
        got += _shows_b(conn, case, "SELECT * FROM {s}.text_keyed", "never bound")
        bind(conn, TENANT_A)
        conn.commit()
        got += _shows_b(conn, case, "SELECT * FROM {s}.text_keyed", "after A committed ('')")
    with case.as_tenant(TENANT_A) as conn:
        got += _refused(
            conn,
            case,
            "INSERT INTO {s}.text_keyed (tenant_id, body) VALUES (:b, 'x')",
            "insert for B",
            {"b": TENANT_B},
        )
    return got


def unique_on_select_only(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        done = attempt(
            conn,
            case.fill("INSERT INTO {s}.catalog_items (tenant_id, body, sku) VALUES (:a, 'x', :sku)"),
            {"a": TENANT_A, "sku": B_SECRET.upper() + "-1"},
        )
    if isinstance(done, str) and "permission denied" in done:
        return []
    return ["the insert was not refused for lack of privilege (an oracle?): " + repr(done)[:300]]


def permissive_true_with_restrictive(case: Case) -> list[str]:
    got = _read_as_a("documents")(case)
    with case.as_tenant(TENANT_A) as conn:
        got += _refused(
            conn,
            case,
            "INSERT INTO {s}.documents (tenant_id, body) VALUES (:b, 'x')",
            "insert for B",
            {"b": TENANT_B},
        )
        got += _refused(
            conn, case, "UPDATE {s}.documents SET tenant_id = :b", "moved rows to B", {"b": TENANT_B}
        )
    return got


def restrictive_only(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        rows = _rows(conn, case, "SELECT * FROM {s}.archive")
        got = [] if rows == "[]" else ["rows visible: " + rows[:300]]
        got += _refused(
            conn,
            case,
            "INSERT INTO {s}.archive (tenant_id, body) VALUES (:a, 'x')",
            "insert",
            {"a": TENANT_A},
        )
    return got


def rls_without_policy(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        rows = _rows(conn, case, "SELECT * FROM {s}.drafts")
        return [] if rows == "[]" else ["rows visible: " + rows[:300]]


def policy_to_other_role(case: Case) -> list[str]:
    got = _read_as_a("tickets")(case)
    with case.as_tenant(TENANT_A) as conn:
        got += _refused(conn, case, "SET LOCAL ROLE {support}", "SET ROLE support")
    return got


def composite_foreign_key(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        b_project = case.scalar("SELECT min(id) FROM {s}.projects WHERE tenant_id = '{b}'")
        insert = "INSERT INTO {s}.tasks (tenant_id, body, project_id, country) VALUES (:t, 'x', :p, 'fr')"
        got = _refused(conn, case, insert, "A's task under B's project", {"t": TENANT_A, "p": b_project})
        got += _refused(conn, case, insert, "a task for B", {"t": TENANT_B, "p": b_project})
    return got + _read_as_a("tasks")(case)


def typed_columns(case: Case) -> list[str]:
    got = _read_as_a("bookings")(case)
    with case.as_tenant(TENANT_A) as conn:
        insert = "INSERT INTO {s}.bookings (tenant_id, body" + BOOKING_COLUMNS + ") VALUES (:t, 'x'"
        got += _refused(
            conn, case, insert + booking_values(FREE_HOUR) + ")", "a booking for B", {"t": TENANT_B}
        )
        # B holds 2030-01-02 14:00: A books the same hour, so the constraint tells A nothing about B
        done = attempt(conn, case.fill(insert + booking_values(B_HOUR) + ")"), {"t": TENANT_A})
        if done != [1]:
            got.append("A could not book the hour B holds (an oracle): " + repr(done)[:300])
    return got


def sequence_usage_only(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        got = _refused(conn, case, "SELECT last_value FROM {s}.invoice_number", "read last_value")
        done = attempt(
            conn, case.fill("INSERT INTO {s}.invoices (tenant_id, body) VALUES (:a, 'x')"), {"a": TENANT_A}
        )
        if done != [1]:
            got.append("USAGE was not enough to insert an invoice: " + repr(done)[:300])
    return got


def trigger_into_tenant_table(case: Case) -> list[str]:
    got = _read_as_a("audit_trail")(case)
    rows = str(case.scalar("SELECT count(*) FROM {s}.audit_trail WHERE tenant_id = '{b}'"))
    return got if rows == "2" else [*got, "the trail did not record B's projects: the trap tests nothing"]


def definer_pinned_search_path(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        got = _refused(
            conn,
            case,
            "CREATE FUNCTION pg_temp.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'fr' $$",
            "a shadow function",
        )
        conn.exec_driver_sql("SET LOCAL search_path = pg_temp, public, pg_catalog")
        name = _rows(conn, case, "SELECT {s}.country_name('FR')")
        if name != "[('France',)]":
            got.append("country_name answered " + name)
    return got


def reporting_unreachable(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        got = _refused(conn, case, "SET LOCAL ROLE {reporting}", "SET ROLE reporting")
        got += _refused(conn, case, "SELECT * FROM {s}.tenant_totals", "read the reporting snapshot")
    return got


def temporary_revoked(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        return _refused(conn, case, "CREATE TEMPORARY TABLE projects (body text)", "a temp table")


def partition_not_granted(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        got = _refused(conn, case, "SELECT * FROM {s}.events_0", "read a partition")
        got += _refused(conn, case, "SELECT * FROM {s}.events_1", "read a partition")
    return got + _read_as_a("events")(case)


def policy_function_not_app_owned(case: Case) -> list[str]:
    got = _read_as_a("notes")(case)
    with case.as_tenant(TENANT_A) as conn:
        got += _refused(
            conn,
            case,
            "CREATE OR REPLACE FUNCTION {s}.current_tenant() RETURNS uuid LANGUAGE sql STABLE"
            " AS $$ SELECT '{b}'::uuid $$",
            "replaced the policy function",
        )
        got += _refused(
            conn, case, "ALTER FUNCTION {s}.current_tenant() SET app.current_tenant_id = '{b}'", "altered it"
        )
    return got


def not_truncatable(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        return _refused(conn, case, "TRUNCATE {s}.projects", "TRUNCATE")


def shared_lookup_read_only(case: Case) -> list[str]:
    with case.as_tenant(TENANT_A) as conn:
        got = _refused(
            conn, case, "INSERT INTO {s}.countries VALUES ('zz', 'Nowhere')", "wrote a shared table"
        )
        rows = _rows(conn, case, "SELECT * FROM {s}.countries")
    return got if A_SECRET not in rows and B_SECRET not in rows else [*got, "tenant data in countries"]


TRAPS = [
    Trap(
        "canonical_unbound",
        "the canonical policy, with no tenant bound and after a commit",
        canonical_unbound,
    ),
    Trap(
        "text_cast_policy", "tenant_id::text = current_setting(..., true): fails closed too", text_cast_policy
    ),
    Trap(
        "unique_on_select_only",
        "UNIQUE (sku) without the tenant on a table the app may only read",
        unique_on_select_only,
    ),
    Trap(
        "permissive_true_with_restrictive",
        "USING (true) beside a RESTRICTIVE tenant policy",
        permissive_true_with_restrictive,
    ),
    Trap(
        "restrictive_only", "only a RESTRICTIVE policy: nothing visible, nothing writable", restrictive_only
    ),
    Trap("rls_without_policy", "RLS enabled and forced, no policy: deny all", rls_without_policy),
    Trap(
        "policy_to_other_role",
        "FOR SELECT TO support USING (true); the app is not a member",
        policy_to_other_role,
    ),
    Trap(
        "composite_foreign_key",
        "FOREIGN KEY (tenant_id, project_id): no pointing at B's rows",
        composite_foreign_key,
    ),
    Trap(
        "typed_columns",
        "ranges, enum, domain, array, jsonb, generated and identity columns; EXCLUDE with the tenant",
        typed_columns,
    ),
    Trap("sequence_usage_only", "a shared id sequence with USAGE only: no last_value", sequence_usage_only),
    Trap(
        "trigger_into_tenant_table",
        "a trigger copies rows into an isolated audit trail",
        trigger_into_tenant_table,
    ),
    Trap("invoker_view", "a security_invoker view", _read_as_a("project_names")),
    Trap(
        "owner_view_on_forced_table",
        "a view of the owner role over a FORCEd table",
        _read_as_a("my_projects"),
    ),
    Trap(
        "definer_pinned_search_path",
        "SECURITY DEFINER with SET search_path reading a shared table",
        definer_pinned_search_path,
    ),
    Trap(
        "reporting_unreachable",
        "a BYPASSRLS reporting role and its snapshot, out of the app's reach",
        reporting_unreachable,
    ),
    Trap("temporary_revoked", "TEMPORARY revoked: no shadowing temp table", temporary_revoked),
    Trap(
        "partition_not_granted",
        "a partitioned tenant table granted on its parent only",
        partition_not_granted,
    ),
    Trap(
        "policy_function_not_app_owned",
        "a policy through a function the owner role owns",
        policy_function_not_app_owned,
    ),
    Trap("not_truncatable", "no TRUNCATE for the app role", not_truncatable),
    Trap("shared_lookup_read_only", "a shared lookup table the app only reads", shared_lookup_read_only),
]


# ----------------------------------------------------------------------------- building and auditing


@contextmanager
def built_correct(database: TestDatabase) -> Iterator[Correct]:
    """The correct schema in a database of its own (hardened), dropped afterwards."""
    target = own_database(database)
    case = open_case(target, label="correct")
    try:
        yield build_correct(case)
    finally:
        try:
            case.close()
        finally:
            case.admin.dispose()
            drop_own_database(database, target)


def normalized(correct: Correct, obj: str) -> str:
    """A finding's object with the generated names replaced by ``{s}``, ``{app}``, ``{reporting}`` ..."""
    case = correct.case
    names = {case.schema: "{s}", case.app: "{app}", case.db: "{db}"}
    names.update({value: "{" + key + "}" for key, value in case.names.items()})
    for value in sorted(names, key=len, reverse=True):
        obj = obj.replace(value, names[value])
    return obj


def score_correct(correct: Correct, *, dynamic: bool = True) -> tuple[set[tuple[str, str]], float]:
    """The (rule, object) of every error and warning the audit reports on the correct schema; its time."""
    started = time.perf_counter()
    report = correct.case.audit(dynamic=dynamic)
    seconds = time.perf_counter() - started
    return {(f.rule, normalized(correct, f.object)) for f in report.failing}, seconds
