"""Dynamic probes: confirmed leaks on truly leaky tables, none on a clean schema, and no trace left behind."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine

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
