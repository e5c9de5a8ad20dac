"""The policy analysis, checked against PostgreSQL twice over.

Each policy is created on a real table and read back with ``pg_get_expr`` (the analysis judges what
PostgreSQL prints, not what was typed); then every verdict is proved as the app role: in each scenario
the analysis calls fail-open the policy really shows rows of other tenants, and in each it calls safe it
shows none.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pgtenancy.audit import expressions
from pgtenancy.audit.expressions import SCENARIOS, Analysis, Scenario, analyse, table_expression
from pgtenancy.errors import ConfigurationError
from tests import audit_sandbox
from tests.audit_sandbox import TENANT_A, Sandbox

pytestmark = pytest.mark.usefixtures("pgtenancy_database")
sandbox = audit_sandbox.sandbox  # the fixture

SETTING = "app.current_tenant_id"
CS = "current_setting('app.current_tenant_id', true)"
P = "NULLIF(" + CS + ", '')::uuid"
ALL: tuple[Scenario, ...] = ("unset", "empty", "bound")
FRESH = uuid.UUID(int=0xF00D)  # a tenant that owns no rows


@dataclass(frozen=True)
class Case:
    """Policies on a table, the scenarios in which they show other tenants' rows, and how to prove it."""

    name: str
    policies: tuple[str, ...]  # CREATE POLICY clauses: "USING (...)", "AS RESTRICTIVE USING (...)"
    fail_open: tuple[Scenario, ...]
    setup: str = ""  # DDL run first (functions)
    attack: dict[str, str] = field(default_factory=dict)  # client-settable inputs set for the proof
    inputs: tuple[str, ...] = ()
    empty_setting_fails: bool = False
    always_true: bool = False


def sql_function(
    name: str, body: str, *, args: str = "t uuid", returns: str = "boolean", extra: str = ""
) -> str:
    return (
        "CREATE FUNCTION {s}."
        + name
        + "("
        + args
        + ") RETURNS "
        + returns
        + " LANGUAGE sql STABLE "
        + extra
        + " AS $$ "
        + body
        + " $$;"
    )


def plpgsql_function(name: str, body: str) -> str:
    return (
        "CREATE FUNCTION {s}."
        + name
        + "(t uuid) RETURNS boolean LANGUAGE plpgsql STABLE AS $$ "
        + body
        + " $$;"
    )


A = "'" + str(TENANT_A) + "'::uuid"
FLAGS = (
    "CREATE TABLE {s}.flags (name text); GRANT SELECT ON {s}.flags TO {app};"
    "INSERT INTO {s}.flags VALUES ('open');"
)
CASES = [
    Case("canonical", ("USING (tenant_id = (SELECT " + P + "))",), ()),
    Case("canonical unwrapped", ("USING (tenant_id = " + P + ")",), ()),
    Case(
        "coalesce default to the row",
        ("USING (tenant_id = COALESCE((" + CS + ")::uuid, tenant_id))",),
        ("unset",),
        empty_setting_fails=True,
    ),
    Case("coalesce with nullif", ("USING (tenant_id = COALESCE(" + P + ", tenant_id))",), ("unset", "empty")),
    Case("text of the column", ("USING (tenant_id::text = " + CS + ")",), ()),
    Case(
        "cast without nullif",
        ("USING (tenant_id = (SELECT (" + CS + ")::uuid))",),
        (),
        empty_setting_fails=True,
    ),
    Case(
        "or is null",
        ("USING (tenant_id = (" + CS + ")::uuid OR " + CS + " IS NULL)",),
        ("unset",),
        empty_setting_fails=True,
    ),
    Case(
        "or is null after a failing cast",
        ("USING (tenant_id = current_setting('app.current_tenant_id')::uuid OR " + CS + " IS NULL)",),
        (),
        empty_setting_fails=True,
    ),
    Case(
        "nullif is null first",
        ("USING (NULLIF(" + CS + ", '') IS NULL OR tenant_id = " + P + ")",),
        ("unset", "empty"),
    ),
    Case(
        "case when '' then true",
        ("USING (CASE WHEN " + CS + " = '' THEN true ELSE tenant_id = " + P + " END)",),
        ("empty",),
    ),
    Case(
        "case when null then true",
        ("USING (CASE WHEN " + CS + " IS NULL THEN true ELSE tenant_id = " + P + " END)",),
        ("unset",),
    ),
    Case(
        "case when missing then false",
        ("USING (CASE WHEN NULLIF(" + CS + ", '') IS NULL THEN false ELSE tenant_id = " + P + " END)",),
        (),
    ),
    Case(
        "a = x or b and c",
        ("USING (tenant_id = " + P + " OR body = 'public' AND tenant_id IS NOT NULL)",),
        ALL,
    ),
    Case(
        "(a or b) and a",
        ("USING ((tenant_id = " + P + " OR body = 'public') AND tenant_id = " + P + ")",),
        (),
    ),
    Case("a and (b or c)", ("USING (tenant_id = " + P + " AND (body = 'a' OR body = 'public'))",), ()),
    Case("not of a negation", ("USING (NOT (tenant_id <> " + P + "))",), ()),
    Case("not of the predicate", ("USING (NOT (tenant_id = " + P + "))",), ("bound",)),
    Case("is not distinct from", ("USING (tenant_id IS NOT DISTINCT FROM " + P + ")",), ()),
    Case("in list with a constant tenant", ("USING (tenant_id IN (" + P + ", " + A + "))",), ALL),
    Case("in list of one", ("USING (tenant_id IN (" + P + "))",), ()),
    Case("any array with null", ("USING (tenant_id = ANY (ARRAY[" + P + ", NULL]))",), ()),
    Case("any of a split setting", ("USING (tenant_id::text = ANY (string_to_array(" + CS + ", ',')))",), ()),
    Case("casts on both sides", ("USING (tenant_id::text = (" + P + ")::text)",), ()),
    Case("lower on both sides", ("USING (lower(tenant_id::text) = lower(" + CS + "))",), ()),
    Case("tautology", ("USING (tenant_id = tenant_id)",), ALL, always_true=True),
    Case("true", ("USING (true)",), ALL, always_true=True),
    Case("never reads the setting", ("USING (tenant_id IS NOT NULL)",), ALL, always_true=True),
    Case(
        "app.is_admin setting",
        ("USING (tenant_id = " + P + " OR current_setting('app.is_admin', true) = 'on')",),
        ALL,
        attack={"app.is_admin": "on"},
        inputs=("current_setting('app.is_admin')",),
    ),
    Case(
        "application_name",
        ("USING (tenant_id = " + P + " OR current_setting('application_name') = 'console')",),
        ALL,
        attack={"application_name": "console"},
        inputs=("current_setting('application_name')",),
    ),
    Case(
        "client input that only narrows",
        ("USING (tenant_id = " + P + " AND current_setting('application_name') <> 'batch')",),
        (),
        inputs=("current_setting('application_name')",),
    ),
    Case(
        "current_user of another role",
        ("USING (current_user = 'someone_else' OR tenant_id = " + P + ")",),
        (),
    ),
    Case(
        "sql function failing open",
        ("USING ({s}.tenant_ok(tenant_id))",),
        ("unset", "empty"),
        setup=sql_function("tenant_ok", "SELECT t = " + P + " OR NULLIF(" + CS + ", '') IS NULL"),
    ),
    Case(
        "sql function",
        ("USING ({s}.tenant_ok(tenant_id))",),
        (),
        setup=sql_function("tenant_ok", "SELECT t = " + P),
    ),
    Case(
        "sql function returning the tenant",
        ("USING (tenant_id = {s}.current_tenant())",),
        (),
        setup=sql_function("current_tenant", "SELECT " + P, args="", returns="uuid"),
    ),
    Case(
        "sql function defaulting to its argument",
        ("USING (tenant_id = {s}.tenant_or(tenant_id))",),
        ("unset", "empty"),
        setup=sql_function("tenant_or", "SELECT COALESCE(" + P + ", t)", returns="uuid"),
    ),
    Case(
        "strict sql function",
        ("USING ({s}.same(tenant_id, NULLIF(" + CS + ", '')))",),
        (),
        setup=sql_function("same", "SELECT s IS NULL OR t = s::uuid", args="t uuid, s text", extra="STRICT"),
    ),
    Case(
        "sql function, not strict",
        ("USING ({s}.same(tenant_id, NULLIF(" + CS + ", '')))",),
        ("unset", "empty"),
        setup=sql_function("same", "SELECT s IS NULL OR t = s::uuid", args="t uuid, s text"),
    ),
    Case(
        "sql-standard body",
        ("USING ({s}.tenant_ok(tenant_id))",),
        (),
        setup="CREATE FUNCTION {s}.tenant_ok(t uuid) RETURNS boolean LANGUAGE sql STABLE RETURN t = "
        + P
        + ";",
    ),
    Case(
        "plpgsql failing open",
        ("USING ({s}.tenant_ok(tenant_id))",),
        ("empty",),
        setup=plpgsql_function("tenant_ok", "BEGIN RETURN t = " + P + " OR " + CS + " = ''; END"),
    ),
    Case(
        "plpgsql",
        ("USING ({s}.tenant_ok(tenant_id))",),
        (),
        setup=plpgsql_function("tenant_ok", "BEGIN RETURN t = " + P + "; END"),
    ),
    Case(
        "subquery beside the predicate",
        ("USING (tenant_id = " + P + " AND EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'open'))",),
        (),
        setup=FLAGS,
    ),
    # the table's decision: any permissive policy, and every restrictive one
    Case(
        "restrictive tenant closes permissive true",
        ("AS RESTRICTIVE USING (tenant_id = " + P + ")", "USING (true)"),
        (),
    ),
    Case("restrictive only", ("AS RESTRICTIVE USING (tenant_id = " + P + ")",), ()),
    Case(
        "two permissive: tenant or public", ("USING (tenant_id = " + P + ")", "USING (body = 'public')"), ALL
    ),
    Case(
        "restrictive failing open",
        ("AS RESTRICTIVE USING (tenant_id = COALESCE(" + P + ", tenant_id))", "USING (true)"),
        ("unset", "empty"),
    ),
    Case(
        "permissive is null beside tenant",
        ("USING (tenant_id = " + P + ")", "USING (" + CS + " IS NULL)"),
        ("unset",),
    ),
    Case(
        "restrictive tenant closes an admin switch",
        (
            "AS RESTRICTIVE USING (tenant_id = " + P + ")",
            "USING (current_setting('app.is_admin', true) = 'on')",
        ),
        (),
        attack={"app.is_admin": "on"},
        inputs=("current_setting('app.is_admin')",),
    ),
]


def build(box: Sandbox, case: Case) -> tuple[list[str], list[str]]:
    """The table, its functions and policies; returns the (permissive, restrictive) expressions as printed."""
    box.table(policy=None)
    box.sql(
        "INSERT INTO {s}.t (tenant_id, body) VALUES ('" + str(audit_sandbox.TENANT_B) + "', 'public')",
        as_owner=False,
    )
    if case.setup:
        box.sql(case.setup)
    for number, clause in enumerate(case.policies):
        box.sql("CREATE POLICY p" + str(number) + " ON {s}.t " + clause)
    with box.admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT polpermissive, pg_get_expr(polqual, polrelid) FROM pg_policy "
                "WHERE polrelid = CAST(:t AS regclass) ORDER BY polname"
            ),
            {"t": box.schema + ".t"},
        ).all()
    return [e for permissive, e in rows if permissive], [e for permissive, e in rows if not permissive]


def definitions(box: Sandbox) -> dict[str, str]:
    """The schema's functions by the names a printed expression calls them."""
    with box.admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT n.nspname || '.' || p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s"
            ),
            {"s": box.schema},
        ).all()
    return dict(rows)


def judge(box: Sandbox, case: Case) -> Analysis:
    permissive, restrictive = build(box, case)
    expression = (
        permissive[0]
        if len(permissive) == 1 and not restrictive
        else table_expression(permissive, restrictive)
    )
    return analyse(
        expression, setting=SETTING, column="tenant_id", role=box.app, resolve=definitions(box).get
    )


def admitted(box: Sandbox, scenario: Scenario, attack: dict[str, str]) -> int:
    """How many rows of other tenants the app role reads in ``scenario`` (a new session: never set)."""
    engine = create_engine(box.database.url("admin"), poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("SET LOCAL ROLE " + box.app)
            settings = dict(attack)
            if scenario != "unset":
                settings[SETTING] = "" if scenario == "empty" else str(FRESH)
            for name, value in settings.items():
                conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
            try:
                return conn.exec_driver_sql("SELECT count(*) FROM " + box.schema + ".t").scalar_one()
            except DBAPIError:
                return 0  # the statement failed: it admitted nothing
    finally:
        engine.dispose()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_verdict_matches_what_postgresql_admits(sandbox: Sandbox, case: Case) -> None:
    analysis = judge(sandbox, case)
    assert analysis.unanalysable is None, analysis.reasons
    assert analysis.fail_open == case.fail_open, analysis.reasons
    assert analysis.bound == (not case.fail_open)
    assert analysis.client_inputs == case.inputs
    assert analysis.empty_setting_fails == case.empty_setting_fails
    assert analysis.always_true == case.always_true
    for scenario in SCENARIOS:
        leaked = admitted(sandbox, scenario, case.attack)
        if scenario in case.fail_open:
            assert leaked > 0, f"{scenario}: the analysis says it fails open, PostgreSQL admitted nothing"
        else:
            assert leaked == 0, f"{scenario}: the analysis says it is safe, PostgreSQL admitted {leaked} rows"


def test_openings_name_what_they_depend_on(sandbox: Sandbox) -> None:
    case = next(c for c in CASES if c.name == "app.is_admin setting")
    analysis = judge(sandbox, case)
    assert {o.inputs for o in analysis.openings} == {("current_setting('app.is_admin')",)}
    assert "when the client sets current_setting('app.is_admin')" in analysis.reasons[0]


def test_a_function_the_opening_goes_through_is_named(sandbox: Sandbox) -> None:
    case = next(c for c in CASES if c.name == "sql function failing open")
    analysis = judge(sandbox, case)
    assert {o.functions for o in analysis.openings} == {(sandbox.schema + ".tenant_ok()",)}


def test_text_tenant_column_matches_rows_whose_tenant_is_empty(sandbox: Sandbox) -> None:
    sandbox.sql(
        "CREATE TABLE {s}.t (tenant_id text NOT NULL, body text NOT NULL);"
        "ALTER TABLE {s}.t ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.t FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY p ON {s}.t USING (tenant_id = " + CS + ");"
        "GRANT SELECT ON {s}.t TO {app}"
    )
    sandbox.sql("INSERT INTO {s}.t VALUES ('a', 'x'), ('b', 'y')", as_owner=False)
    with sandbox.admin.connect() as conn:
        printed = conn.execute(
            text(
                "SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid = CAST(:t AS regclass)"
            ),
            {"t": sandbox.schema + ".t"},
        ).scalar_one()
    analysis = analyse(printed, setting=SETTING, column="tenant_id", column_type="text")
    assert analysis.bound and analysis.empty_tenant_rows
    assert any("whose tenant is ''" in reason for reason in analysis.reasons)
    assert all(admitted(sandbox, s, {}) == 0 for s in SCENARIOS)  # no such row yet
    sandbox.sql("INSERT INTO {s}.t VALUES ('', 'orphan')", as_owner=False)
    assert admitted(sandbox, "empty", {}) == 1
    assert uuid_analysis_of(printed).empty_tenant_rows is False  # a uuid's text is never ''


def uuid_analysis_of(expression: str) -> Analysis:
    return analyse(expression, setting=SETTING, column="tenant_id", column_type="uuid")


UNANALYSABLE = [
    ("USING (tenant_id = " + P + " OR EXISTS (SELECT 1 FROM {s}.flags WHERE name = 'open'))", "a subquery"),
    ("USING (tenant_id::text LIKE " + CS + " || '_')", "(LIKE)"),
    ("USING ({s}.branchy(tenant_id))", "PL/pgSQL body is not one RETURN"),
]


@pytest.mark.parametrize(("clause", "reason"), UNANALYSABLE, ids=[r for _, r in UNANALYSABLE])
def test_what_cannot_be_analysed_is_said(sandbox: Sandbox, clause: str, reason: str) -> None:
    case = Case(
        "unanalysable",
        (clause,),
        (),
        setup=FLAGS
        + plpgsql_function(
            "branchy", "BEGIN IF " + CS + " IS NULL THEN RETURN true; END IF; RETURN t = " + P + "; END"
        ),
    )
    analysis = judge(sandbox, case)
    assert analysis.unanalysable is not None and reason in analysis.unanalysable
    assert not analysis.bound


def test_the_parser_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(expressions, "ast", raising=False)  # as before the first analysis
    monkeypatch.setitem(sys.modules, "pglast", None)
    with pytest.raises(ConfigurationError, match=r"pgtenancy\[cli\]"):
        uuid_analysis_of("true")


def test_an_expression_postgresql_would_refuse_is_not_analysed() -> None:
    assert "parser" in (uuid_analysis_of("tenant_id = = 1").unanalysable or "")
