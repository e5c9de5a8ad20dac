"""Dynamic probes: confirmed leaks on truly leaky tables, none on a clean schema, and no trace left behind."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from pgtenancy.audit import PROBE_RULES, audit
from tests import audit_sandbox
from tests.audit_sandbox import Sandbox
from tests.test_audit_rules import (
    build_clean,
    definer_view,
    fail_open_function,
    function_ignoring_setting,
    rls_off,
    security_definer_function,
    truncate_granted,
    using_true_beside_correct,
    with_check_true,
)

pytestmark = pytest.mark.usefixtures("pgtenancy_database")
sandbox = audit_sandbox.sandbox  # the fixture

FAIL_OPEN = (
    "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid "
    "OR NULLIF(current_setting('app.current_tenant_id', true), '') IS NULL"
)


def fail_open_is_null(box: Sandbox) -> dict:
    box.table(policy=f"USING ({FAIL_OPEN}) WITH CHECK ({FAIL_OPEN})")
    return {}


def update_check_true(box: Sandbox) -> dict:
    box.table(policy="USING ({p}) WITH CHECK (true)")
    return {}


def delete_using_true(box: Sandbox) -> dict:
    box.table()
    box.sql("CREATE POLICY purge ON {s}.t FOR DELETE USING (true)")
    return {}


def update_using_true(box: Sandbox) -> dict:
    box.table()
    box.sql("CREATE POLICY edit ON {s}.t FOR UPDATE USING (true) WITH CHECK (true)")
    return {}


def empty_table_without_rls(box: Sandbox) -> dict:
    box.table(rls=False, force=False, policy=None, seed=False)
    return {}


def populated_materialized_view(box: Sandbox) -> dict:
    box.table()
    box.sql(
        "CREATE MATERIALIZED VIEW {s}.mv AS SELECT * FROM {s}.t; GRANT SELECT ON {s}.mv TO {app}",
        as_owner=False,
    )
    return {}


def unsealed_while_sealing_is_declared(box: Sandbox) -> dict:
    box.table()
    return {"sealed": True}


LEAKS: list[tuple[Callable[[Sandbox], dict], set[str]]] = [
    (rls_off, {"PGT101", "PGT102", "PGT103", "PGT104", "PGT106"}),
    (empty_table_without_rls, {"PGT101", "PGT102", "PGT103", "PGT104"}),
    (with_check_true, {"PGT102"}),
    (update_check_true, {"PGT102", "PGT103"}),
    (update_using_true, {"PGT103"}),
    (delete_using_true, {"PGT104"}),
    (using_true_beside_correct, {"PGT101", "PGT106"}),
    (fail_open_is_null, {"PGT106"}),
    (fail_open_function, {"PGT106"}),
    (function_ignoring_setting, {"PGT101", "PGT103", "PGT104"}),
    (truncate_granted, {"PGT105"}),
    (definer_view, {"PGT107"}),
    (populated_materialized_view, {"PGT107"}),
    (security_definer_function, {"PGT107"}),
    (unsealed_while_sealing_is_declared, {"PGT108"}),
]


@pytest.mark.parametrize(("build", "expected"), LEAKS, ids=[build.__name__ for build, _ in LEAKS])
def test_probes_confirm_real_leaks_and_leave_no_trace(
    sandbox: Sandbox, build: Callable[[Sandbox], dict], expected: set[str]
) -> None:
    options = build(sandbox)
    before = sandbox.checksums()
    report = sandbox.audit(**options)
    assert sandbox.checksums() == before
    confirmed = {f.rule for f in report.findings if f.confirmed}
    assert expected <= confirmed, [(f.rule, f.message) for f in report.findings]
    for finding in report.findings:
        if finding.confirmed:
            assert finding.severity == "error"
            assert finding.reproduction and finding.reproduction.startswith("BEGIN;")
            assert finding.reproduction.endswith("ROLLBACK;")


def test_every_probe_rule_is_exercised() -> None:
    exercised = set().union(*(expected for _, expected in LEAKS))
    assert exercised == set(PROBE_RULES) - {"PGT100"}


def test_clean_schema_has_no_confirmed_leak_and_no_trace(sandbox: Sandbox) -> None:
    build_clean(sandbox)
    before = sandbox.checksums()
    report = sandbox.audit()
    assert sandbox.checksums() == before
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]
    assert not any(f.confirmed for f in report.findings)


def test_reproduction_really_reproduces(sandbox: Sandbox) -> None:
    using_true_beside_correct(sandbox)
    leak = next(f for f in sandbox.audit().findings if f.rule == "PGT101")
    statements = [line.rstrip(";") for line in (leak.reproduction or "").splitlines()]
    with sandbox.admin.connect() as conn:
        for statement in statements[1:-2]:  # after BEGIN (SQLAlchemy begins), before the SELECT and ROLLBACK
            conn.exec_driver_sql(statement)
        rows = conn.exec_driver_sql(statements[-2]).all()
        conn.rollback()
    assert rows, leak.reproduction


def test_audit_as_the_app_role_itself_probes_with_its_own_rows(sandbox: Sandbox) -> None:
    rls_off(sandbox)
    sandbox.table("clean_t", seed=False)
    before = sandbox.checksums()
    report = audit(sandbox.database.url("app"), schemas=[sandbox.schema])
    assert sandbox.checksums() == before
    assert report.summary["role"] == sandbox.app
    leaking = {f.object for f in report.findings if f.confirmed}
    assert leaking == {"table " + sandbox.schema + ".t"}


def test_probes_skipped_when_the_role_cannot_be_assumed(sandbox: Sandbox) -> None:
    rls_off(sandbox)
    report = audit(sandbox.database.url("owner"), role=sandbox.app, schemas=[sandbox.schema])
    skipped = [f for f in report.findings if f.rule == "PGT100"]
    assert skipped and "cannot SET ROLE" in skipped[0].message
    assert not any(f.confirmed for f in report.findings)
    assert "PGT001" in report.rules()  # the static rules still ran


def test_no_dynamic_runs_no_probe(sandbox: Sandbox) -> None:
    rls_off(sandbox)
    report = sandbox.audit(dynamic=False)
    assert not any(f.rule.startswith("PGT1") for f in report.findings)


def test_probes_of_the_seeded_shared_schema_find_nothing(seeded) -> None:
    engine = create_engine(seeded.url("admin"))
    with engine.connect() as conn:
        before = conn.exec_driver_sql(
            "SELECT md5(string_agg(n::text, '|' ORDER BY n::text)) FROM notes n"
        ).scalar()
    report = audit(seeded.url("admin"), role=seeded.roles.app)
    with engine.connect() as conn:
        after = conn.exec_driver_sql(
            "SELECT md5(string_agg(n::text, '|' ORDER BY n::text)) FROM notes n"
        ).scalar()
    engine.dispose()
    assert before == after
    assert report.failing == ()


EXOTIC_COLUMNS = (
    "CREATE TYPE {s}.mood AS ENUM ('calm', 'busy');"
    "CREATE DOMAIN {s}.short_code AS text NOT NULL CHECK (VALUE ~ '^[a-z]{{1,3}}$');"
    "CREATE TABLE {s}.orgs (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,"
    " name text NOT NULL CHECK (name <> ''), PRIMARY KEY (tenant_id, id));"
    "CREATE TABLE {s}.t (id bigint GENERATED ALWAYS AS IDENTITY, tenant_id uuid NOT NULL,"
    " org_id bigint NOT NULL, during tstzrange NOT NULL, seats int4range NOT NULL CHECK (NOT isempty(seats)),"
    " mood {s}.mood NOT NULL, code {s}.short_code, tags text[] NOT NULL, doc jsonb NOT NULL,"
    " qty integer NOT NULL CHECK (qty BETWEEN 1 AND 5), email text NOT NULL,"
    " slug text GENERATED ALWAYS AS (lower(email)) STORED,"
    " PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, email),"
    " FOREIGN KEY (tenant_id, org_id) REFERENCES {s}.orgs (tenant_id, id));"
)


def exotic_table(box: Sandbox, *, insert_check: str) -> None:
    """A tenant table whose rows need a parent, ranges, an enum, a domain, an array, json and CHECKs."""
    box.sql(EXOTIC_COLUMNS)
    for name in ("orgs", "t"):
        box.sql(
            "ALTER TABLE {s}." + name + " ENABLE ROW LEVEL SECURITY;"
            "ALTER TABLE {s}." + name + " FORCE ROW LEVEL SECURITY;"
            "CREATE POLICY tenant_isolation ON {s}." + name + " USING ({p}) WITH CHECK ({p});"
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}." + name + " TO {app}"
        )
    box.sql("CREATE POLICY lax_insert ON {s}.t FOR INSERT WITH CHECK (" + insert_check + ")")


def test_probes_build_rows_for_every_column_type_and_their_parents(sandbox: Sandbox) -> None:
    exotic_table(sandbox, insert_check="true")
    before = sandbox.checksums()
    report = sandbox.audit()
    assert sandbox.checksums() == before
    confirmed = {f.rule for f in report.findings if f.confirmed and f.object.endswith(".t")}
    assert confirmed == {"PGT102", "PGT106"}, [(f.rule, f.object, f.message) for f in report.findings]
    assert "PGT100" not in report.rules(), [f.message for f in report.findings if f.rule == "PGT100"]
    # the reproduction really inserts: parent rows and values that pass every constraint
    leak = next(f for f in report.findings if f.rule == "PGT102")
    assert "INSERT INTO" in (leak.reproduction or "")


def test_probes_of_the_same_table_done_right_find_nothing(sandbox: Sandbox) -> None:
    exotic_table(sandbox, insert_check="{p}")
    report = sandbox.audit()
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]


def test_assert_tenant_isolated_sees_an_insert_hole_behind_a_composite_foreign_key(sandbox: Sandbox) -> None:
    from pgtenancy.testing import assert_tenant_isolated

    exotic_table(sandbox, insert_check="true")
    url = sandbox.database.url("app")
    with pytest.raises(AssertionError, match="PGT102"):
        assert_tenant_isolated(url, sandbox.schema + ".t", [audit_sandbox.TENANT_A, audit_sandbox.TENANT_B])


def test_a_probe_that_cannot_build_a_row_is_a_warning_with_its_reason(sandbox: Sandbox) -> None:
    sandbox.table()
    sandbox.sql("ALTER TABLE {s}.t ADD COLUMN lsn pg_lsn NOT NULL DEFAULT '0/0'")
    sandbox.sql("ALTER TABLE {s}.t ALTER COLUMN lsn DROP DEFAULT", as_owner=True)
    sandbox.sql("CREATE POLICY lax_insert ON {s}.t FOR INSERT WITH CHECK (true)")
    report = sandbox.audit()
    undecided = [f for f in report.findings if f.rule == "PGT100"]
    assert undecided and undecided[0].severity == "warning"
    assert "pg_lsn" in undecided[0].message
    assert report.failing  # a check that could not run never passes


@pytest.mark.parametrize(
    ("policy_check", "values", "expected"),
    [
        ("false", "42, 7", "42501"),
        ("true", "42, 7", "23503"),
        ("false", "1, 1", "42501"),
        ("true", "1, 1", "23505"),
    ],
    ids=[
        "foreign-key-refused-by-policy",
        "foreign-key-admitted",
        "unique-refused-by-policy",
        "unique-admitted",
    ],
)
def test_policies_are_checked_before_foreign_and_unique_keys(
    sandbox: Sandbox, policy_check: str, values: str, expected: str
) -> None:
    """The probes read a write stopped by a foreign or unique key as admitted by the policies: PostgreSQL
    checks row-level security before those constraints (the day it stops, this test fails)."""
    sandbox.sql(
        "CREATE TABLE {s}.parent (id int PRIMARY KEY); INSERT INTO {s}.parent VALUES (1);"
        "CREATE TABLE {s}.child (tenant_id uuid NOT NULL, parent_id int NOT NULL REFERENCES {s}.parent,"
        " code int NOT NULL UNIQUE); INSERT INTO {s}.child VALUES (gen_random_uuid(), 1, 1);"
        "ALTER TABLE {s}.child ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.child FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY p ON {s}.child USING (true) WITH CHECK (" + policy_check + ");"
        "GRANT SELECT, INSERT ON {s}.child TO {app}"
    )
    engine = create_engine(sandbox.database.url("app"))
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as raised:
            conn.exec_driver_sql(
                "INSERT INTO " + sandbox.schema + ".child VALUES (gen_random_uuid(), " + values + ")"
            )
    finally:
        engine.dispose()
    assert getattr(raised.value.orig, "sqlstate", None) == expected


def test_probes_when_the_app_role_bypasses_rls_are_a_warning(sandbox: Sandbox) -> None:
    sandbox.table()
    bypassing = sandbox.role("BYPASSRLS")
    sandbox.sql("GRANT SELECT ON {s}.t TO " + bypassing)
    report = sandbox.audit(role=bypassing)
    undecided = [f for f in report.findings if f.rule == "PGT100"]
    assert undecided and undecided[0].severity == "warning"


@pytest.mark.parametrize(("default", "undecided"), [("", False), (str(audit_sandbox.TENANT_B), True)])
def test_a_tenant_setting_a_new_connection_already_reads_is_said_not_skipped(
    sandbox: Sandbox, default: str, undecided: bool
) -> None:
    """With a default for the setting (postgresql.conf, the database, the role) a new connection never
    reads it unset: '' is covered by the reset probes, a tenant id cannot be probed and is a warning."""
    sandbox.table()
    database = sandbox.database.name
    sandbox.sql(
        'ALTER DATABASE "' + database + "\" SET app.current_tenant_id = '" + default + "'", as_owner=False
    )
    try:
        report = sandbox.audit()
    finally:
        sandbox.sql('ALTER DATABASE "' + database + '" RESET app.current_tenant_id', as_owner=False)
    messages = [f.message for f in report.findings if f.rule == "PGT100"]
    assert any("reads the tenant setting as" in m for m in messages) is undecided, messages
    assert bool(report.failing) is undecided, [(f.rule, f.message) for f in report.failing]
