"""``assert_tenant_isolated`` and ``assert_no_findings`` against leaky and clean schemas."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pgtenancy.errors import ConfigurationError, InvalidTenantError
from pgtenancy.testing.assertions import assert_no_findings, assert_tenant_isolated
from tests import audit_sandbox
from tests.audit_sandbox import TENANT_A, TENANT_B, Sandbox
from tests.test_audit_probes import delete_using_true, fail_open_is_null, update_check_true
from tests.test_audit_rules import (
    build_clean,
    function_ignoring_setting,
    rls_off,
    truncate_granted,
    using_true_beside_correct,
    with_check_true,
)

pytestmark = pytest.mark.usefixtures("pgtenancy_database")
sandbox = audit_sandbox.sandbox  # the fixture

LEAKY: list[tuple[Callable[[Sandbox], dict], str]] = [
    (rls_off, "PGT101"),
    (with_check_true, "PGT102"),
    (update_check_true, "PGT103"),
    (delete_using_true, "PGT104"),
    (truncate_granted, "PGT105"),
    (fail_open_is_null, "PGT106"),
    (using_true_beside_correct, "PGT101"),
    (function_ignoring_setting, "PGT101"),
]


@pytest.mark.parametrize(("build", "rule"), LEAKY, ids=[build.__name__ for build, _ in LEAKY])
def test_leaky_table_fails_the_assertion(
    sandbox: Sandbox, build: Callable[[Sandbox], dict], rule: str
) -> None:
    build(sandbox)
    before = sandbox.checksums()
    with pytest.raises(AssertionError, match=rule) as raised:
        assert_tenant_isolated(
            sandbox.database.url("app"), sandbox.schema + ".t", tenants=[TENANT_A, TENANT_B]
        )
    assert sandbox.checksums() == before
    assert "not isolated between tenants" in str(raised.value)
    assert "set_config('app.current_tenant_id'" in str(raised.value)  # a reproduction to paste


def test_clean_tables_pass_and_stay_unchanged(sandbox: Sandbox) -> None:
    build_clean(sandbox)
    before = sandbox.checksums()
    url = sandbox.database.url("app", drivername="postgresql+asyncpg")  # any driver: it audits with psycopg
    for table in ("project", "task"):
        assert_tenant_isolated(
            url, sandbox.schema + "." + table, tenants=[TENANT_A, TENANT_B, str(TENANT_A)[:-1] + "f"]
        )
    assert sandbox.checksums() == before


def test_works_on_an_instrumented_engine(pgtenancy_engine_factory, seeded) -> None:
    engine = pgtenancy_engine_factory("psycopg")  # instrumented; the assertion uses its own plain engine
    from tests.conftest import INT_TENANTS, TENANTS

    assert_tenant_isolated(engine, "notes", tenants=TENANTS[:3])
    assert_tenant_isolated(engine, "int_notes", tenants=INT_TENANTS, key_type="int")


def test_a_role_that_bypasses_rls_cannot_prove_anything(sandbox: Sandbox) -> None:
    build_clean(sandbox)
    with pytest.raises(AssertionError, match="superuser"):
        assert_tenant_isolated(
            sandbox.database.url("admin"), sandbox.schema + ".project", tenants=[TENANT_A, TENANT_B]
        )


@pytest.mark.parametrize(
    ("table", "tenants", "error"),
    [
        pytest.param("project", ["not-a-uuid", TENANT_B], InvalidTenantError, id="bad-tenant"),
        pytest.param("project", [TENANT_A, TENANT_A], ConfigurationError, id="one-tenant"),
        pytest.param("missing", [TENANT_A, TENANT_B], ConfigurationError, id="missing-table"),
        pytest.param("country", [TENANT_A, TENANT_B], ConfigurationError, id="no-tenant-column"),
        pytest.param("a.b.c", [TENANT_A, TENANT_B], ConfigurationError, id="bad-name"),
    ],
)
def test_bad_input_is_a_typed_error(sandbox: Sandbox, table: str, tenants: list, error: type) -> None:
    build_clean(sandbox)
    name = table if table == "a.b.c" else sandbox.schema + "." + table
    with pytest.raises(error):
        assert_tenant_isolated(sandbox.database.url("app"), name, tenants=tenants)


def test_assert_no_findings_passes_on_a_clean_schema(sandbox: Sandbox) -> None:
    build_clean(sandbox)
    assert_no_findings(sandbox.database.url("admin"), role=sandbox.app, schemas=[sandbox.schema])


def test_assert_no_findings_names_every_problem(sandbox: Sandbox) -> None:
    rls_off(sandbox)
    with pytest.raises(AssertionError) as raised:
        assert_no_findings(sandbox.database.url("admin"), role=sandbox.app, schemas=[sandbox.schema])
    message = str(raised.value)
    assert "PGT001" in message and "PGT101" in message and "fix: ALTER TABLE" in message


def test_assert_no_findings_can_ignore_rules(sandbox: Sandbox) -> None:
    build_clean(sandbox)
    sandbox.sql("ALTER TABLE {s}.project ADD CONSTRAINT project_id_key UNIQUE (id)")
    with pytest.raises(AssertionError, match="PGT021"):
        assert_no_findings(sandbox.database.url("admin"), role=sandbox.app, schemas=[sandbox.schema])
    assert_no_findings(
        sandbox.database.url("admin"), role=sandbox.app, schemas=[sandbox.schema], ignore=["PGT021"]
    )
