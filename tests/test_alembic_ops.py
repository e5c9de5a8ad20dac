"""Alembic operations: registered on ``op``, reversible, idempotent, checked before DDL, rendered offline."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator

import pytest
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import render_op_text
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import NullPool

import pgtenancy.alembic
from pgtenancy.alembic import (
    CreateReferenceTableOp,
    CreateTenantRoleOp,
    DisableTenantIsolationOp,
    DistributeTenantTableOp,
    EnableTenantIsolationOp,
    GrantTenantAccessOp,
    IsolationSpec,
    RevokeTenantAccessOp,
    UndistributeTableOp,
)
from pgtenancy.catalog import SchemaMismatchError, role_info, table_policies, table_privileges, table_security
from pgtenancy.errors import ConfigurationError
from pgtenancy.testing import TestDatabase
from tests.alembic_support import run_sql_script

ROLE = "pgt_ops_" + secrets.token_hex(3)  # roles are shared by the whole server


@pytest.fixture
def owner(pgtenancy_owner_engine: Engine) -> Iterator[Connection]:
    """An owner connection with two fresh tables; everything is rolled back after the test."""
    with pgtenancy_owner_engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE accounts (tenant_id uuid NOT NULL, id bigserial, PRIMARY KEY (tenant_id, id))"
        )
        conn.exec_driver_sql("CREATE TABLE counters (tenant_id bigint NOT NULL, n int)")
        yield conn
        conn.rollback()


def operations(conn: Connection) -> Operations:
    return Operations(MigrationContext.configure(conn))


def offline_operations() -> tuple[Operations, io.StringIO]:
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True}
    )
    return Operations(context), buffer


def test_importing_the_package_registers_every_operation():
    for name in (
        "enable_tenant_isolation",
        "disable_tenant_isolation",
        "create_tenant_role",
        "drop_tenant_role",
        "grant_tenant_access",
        "revoke_tenant_access",
        "distribute_tenant_table",
        "create_reference_table",
        "undistribute_table",
    ):
        assert callable(getattr(Operations, name)), name
        assert callable(getattr(pgtenancy.alembic, name)), name


def test_enable_and_disable_are_idempotent_and_exact_reverses(owner: Connection):
    op = operations(owner)
    for _ in range(2):
        op.enable_tenant_isolation("counters", key_type="int")
    security = table_security(owner, "counters")
    assert security is not None and security.rls_enabled and security.rls_forced
    assert [p.name for p in table_policies(owner, "counters")] == ["pgtenancy_tenant_isolation"]
    for _ in range(2):
        op.disable_tenant_isolation("counters", key_type="int")
    security = table_security(owner, "counters")
    assert security is not None and not security.rls_enabled and not security.rls_forced
    assert table_policies(owner, "counters") == []


def test_typed_functions_run_through_the_current_migration_context(owner: Connection):
    with Operations.context(MigrationContext.configure(owner)):
        pgtenancy.alembic.enable_tenant_isolation("counters", key_type="int")
        security = table_security(owner, "counters")
        assert security is not None and security.rls_forced
        pgtenancy.alembic.disable_tenant_isolation("counters", key_type="int")
    security = table_security(owner, "counters")
    assert security is not None and not security.rls_enabled


def test_reverse_carries_the_full_definition():
    spec = IsolationSpec("t", "org", "s", key_type="str", setting="my.org", citus=True)
    disable = EnableTenantIsolationOp(spec).reverse()
    assert isinstance(disable, DisableTenantIsolationOp) and disable.spec == spec
    assert disable.reverse().spec == spec
    role = CreateTenantRoleOp("r", login=False, password="pw").reverse().reverse()
    assert (role.name, role.login, role.password) == ("r", False, "pw")
    grant = GrantTenantAccessOp("r", "t", schema="s").reverse()
    assert isinstance(grant, RevokeTenantAccessOp) and (grant.role, grant.table, grant.schema) == (
        "r",
        "t",
        "s",
    )


def test_grant_and_revoke_run_twice(owner: Connection, pgtenancy_database: TestDatabase):
    op, app = operations(owner), pgtenancy_database.roles.app
    for _ in range(2):
        op.grant_tenant_access(app, "accounts")
    assert table_privileges(owner, app, "accounts") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    for _ in range(2):
        op.revoke_tenant_access(app, "accounts")
    assert table_privileges(owner, app, "accounts") == frozenset()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda op: op.enable_tenant_isolation("missing"), SchemaMismatchError, "does not exist"),
        (
            lambda op: op.enable_tenant_isolation("counters", "org_id"),
            SchemaMismatchError,
            "no column 'org_id'",
        ),
        (
            lambda op: op.enable_tenant_isolation("counters"),
            SchemaMismatchError,
            "is bigint, but key_type 'uuid'",
        ),
        (
            lambda op: op.enable_tenant_isolation("counters", key_type="float"),
            ConfigurationError,
            "unsupported",
        ),
        (
            lambda op: op.enable_tenant_isolation("counters", setting="bad setting"),
            ConfigurationError,
            "setting",
        ),
        (
            lambda op: op.grant_tenant_access("pgt_no_such_role", "counters"),
            SchemaMismatchError,
            "create it first",
        ),
    ],
)
def test_bad_input_fails_before_any_ddl(owner: Connection, call, error, message):
    with pytest.raises(error, match=message):
        call(operations(owner))
    security = table_security(owner, "counters")
    assert security is not None and not security.rls_enabled
    assert table_policies(owner, "counters") == []


def test_offline_mode_writes_plain_sql_that_runs(pgtenancy_database: TestDatabase):
    op, buffer = offline_operations()
    op.enable_tenant_isolation("offline_items", key_type="int")
    op.grant_tenant_access(pgtenancy_database.roles.app, "offline_items")
    script = buffer.getvalue()
    assert "ALTER TABLE offline_items ENABLE ROW LEVEL SECURITY;" in script
    assert "DO $pgtenancy$" in script and "CREATE INDEX pgtenancy_ix_offline_items_tenant_id" in script
    setup = "CREATE TABLE offline_items (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL);\n"
    run_sql_script(pgtenancy_database.url("owner"), "BEGIN;\n" + setup + script + script + "ROLLBACK;")


@pytest.fixture
def admin_ops(pgtenancy_database: TestDatabase) -> Iterator[tuple[Operations, Connection]]:
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool)
    with engine.connect() as conn:
        yield operations(conn), conn
        conn.rollback()
    engine.dispose()


def test_role_operations_run_twice(admin_ops: tuple[Operations, Connection]):
    op, conn = admin_ops
    for _ in range(2):
        op.create_tenant_role(ROLE, login=False)
    role = role_info(conn, ROLE)
    assert role is not None and not role.login and not role.bypassrls and not role.superuser
    for _ in range(2):
        op.drop_tenant_role(ROLE, login=False)
    assert role_info(conn, ROLE) is None


def test_create_role_refuses_an_existing_role_that_bypasses_rls(admin_ops: tuple[Operations, Connection]):
    op, conn = admin_ops
    conn.exec_driver_sql("CREATE ROLE " + ROLE + " BYPASSRLS")
    with pytest.raises(SchemaMismatchError, match="BYPASSRLS"):
        op.create_tenant_role(ROLE)


SECRET = "pw-" + secrets.token_hex(8)


def role_password_hash(conn: Connection, role: str) -> str | None:
    """The stored password (a SCRAM verifier) of ``role``, read as the superuser; ``None`` if it has none."""
    return conn.exec_driver_sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).scalar_one()


@pytest.mark.parametrize(
    ("options", "set_from"),
    [({"password": SECRET}, ""), ({"password_env": "PGTENANCY_TEST_ROLE_PASSWORD"}, " to the value of $")],
    ids=["password", "password_env"],
)
def test_offline_sql_never_holds_the_password_and_says_how_to_set_it(
    admin_ops: tuple[Operations, Connection],
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, str],
    set_from: str,
) -> None:
    monkeypatch.setenv("PGTENANCY_TEST_ROLE_PASSWORD", SECRET)
    op, buffer = offline_operations()
    op.create_tenant_role(ROLE, **options)
    script = buffer.getvalue()
    assert SECRET not in script
    assert (
        f"-- pgtenancy: this script sets no password for role {ROLE} (offline SQL never holds one);" in script
    )
    assert f"-- set it{set_from}" in script and f"\\password {ROLE}" in script
    _, conn = admin_ops
    conn.exec_driver_sql(script)
    role = role_info(conn, ROLE)
    assert role is not None and role.login and role_password_hash(conn, ROLE) is None


def test_online_the_password_is_read_from_the_environment_when_the_migration_runs(
    admin_ops: tuple[Operations, Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    op, conn = admin_ops
    monkeypatch.delenv("PGTENANCY_TEST_ROLE_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError, match="set the environment variable PGTENANCY_TEST_ROLE_PASSWORD"):
        op.create_tenant_role(ROLE, password_env="PGTENANCY_TEST_ROLE_PASSWORD")
    assert role_info(conn, ROLE) is None  # refused before any DDL
    monkeypatch.setenv("PGTENANCY_TEST_ROLE_PASSWORD", SECRET)
    op.create_tenant_role(ROLE, password_env="PGTENANCY_TEST_ROLE_PASSWORD")
    verifier = role_password_hash(conn, ROLE)
    assert verifier is not None and verifier.startswith("SCRAM-SHA-256$")


def test_password_env_must_name_a_variable_and_not_compete_with_a_password() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        CreateTenantRoleOp("r", password="pw", password_env="PW")
    for name in ("", "1PW", "PW;DROP", "PW\n"):
        with pytest.raises(ConfigurationError, match="must name an environment variable"):
            CreateTenantRoleOp("r", password_env=name)
    role = CreateTenantRoleOp("r", password_env="PW").reverse().reverse()
    assert (role.password, role.password_env) == (None, "PW")


def test_renderers_write_operations_with_their_import():
    migration_context = MigrationContext.configure(dialect_name="postgresql")
    context = AutogenContext(migration_context, opts={"alembic_module_prefix": "op."}, autogenerate=False)
    spec = IsolationSpec("projects", key_type="int")
    assert render_op_text(context, EnableTenantIsolationOp(spec)) == (
        "op.enable_tenant_isolation('projects', key_type='int')"
    )
    assert render_op_text(
        context, DisableTenantIsolationOp(IsolationSpec("t", "org", "s", setting="my.org"))
    ) == ("op.disable_tenant_isolation('t', column='org', schema='s', setting='my.org')")
    assert render_op_text(context, GrantTenantAccessOp("app", "t")) == "op.grant_tenant_access('app', 't')"
    assert render_op_text(context, CreateTenantRoleOp("app", login=False)) == (
        "op.create_tenant_role('app', login=False)"
    )
    assert render_op_text(context, CreateTenantRoleOp("app", password_env="APP_PASSWORD")) == (
        "op.create_tenant_role('app', password_env='APP_PASSWORD')"
    )
    assert context.imports == {"import pgtenancy.alembic"}

    assert render_op_text(context, DistributeTenantTableOp("projects")) == (
        "op.distribute_tenant_table('projects')"
    )


def test_citus_operations_render_and_reverse_losslessly():
    migration_context = MigrationContext.configure(dialect_name="postgresql")
    context = AutogenContext(migration_context, opts={"alembic_module_prefix": "op."}, autogenerate=False)
    distribute = DistributeTenantTableOp("tasks", "org_id", schema="crm", colocate_with="projects")
    undo = distribute.reverse()
    assert render_op_text(context, distribute) == (
        "op.distribute_tenant_table('tasks', 'org_id', schema='crm', colocate_with='projects')"
    )
    assert render_op_text(context, undo) == (
        "op.undistribute_table('tasks', 'org_id', schema='crm', colocate_with='projects')"
    )
    again = undo.reverse()
    assert isinstance(again, DistributeTenantTableOp)
    assert (again.table, again.column, again.schema, again.colocate_with) == (
        "tasks",
        "org_id",
        "crm",
        "projects",
    )
    reference = CreateReferenceTableOp("plans", schema="crm")
    assert render_op_text(context, reference) == "op.create_reference_table('plans', schema='crm')"
    assert render_op_text(context, reference.reverse()) == (
        "op.undistribute_table('plans', schema='crm', reference=True)"
    )
    assert isinstance(reference.reverse().reverse(), CreateReferenceTableOp)
    assert context.imports == {"import pgtenancy.alembic"}


@pytest.mark.parametrize(
    "build",
    [
        lambda: DistributeTenantTableOp(""),
        lambda: DistributeTenantTableOp("t", "x" * 64),
        lambda: DistributeTenantTableOp("t", colocate_with=""),
        lambda: CreateReferenceTableOp("t", schema=""),
        lambda: UndistributeTableOp("t", colocate_with="p", reference=True),
    ],
)
def test_citus_operations_refuse_bad_input_when_built(build):
    with pytest.raises(ConfigurationError):
        build()


def test_citus_operations_write_guarded_sql_offline():
    op, buffer = offline_operations()
    op.distribute_tenant_table("Tasks", schema="crm", colocate_with="projects")
    op.create_reference_table("plans")
    op.undistribute_table("plans", reference=True)
    assert buffer.getvalue().split(";\n\n")[:3] == [
        "SELECT create_distributed_table(CAST('crm.\"Tasks\"' AS regclass), 'tenant_id', "
        "colocate_with => 'crm.projects') WHERE NOT EXISTS "
        "(SELECT FROM pg_dist_partition WHERE logicalrelid = CAST('crm.\"Tasks\"' AS regclass))",
        "SELECT create_reference_table(CAST('plans' AS regclass)) WHERE NOT EXISTS "
        "(SELECT FROM pg_dist_partition WHERE logicalrelid = CAST('plans' AS regclass))",
        "SELECT undistribute_table(CAST('plans' AS regclass)) WHERE EXISTS "
        "(SELECT FROM pg_dist_partition WHERE logicalrelid = CAST('plans' AS regclass))",
    ]


def test_a_hostile_table_name_stays_one_literal_offline():
    op, buffer = offline_operations()
    op.distribute_tenant_table("x'); DROP TABLE y; --")
    assert buffer.getvalue().startswith(
        "SELECT create_distributed_table(CAST('\"x''); DROP TABLE y; --\"' AS regclass), 'tenant_id'"
    )
