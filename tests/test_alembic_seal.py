"""Sealing operations: registered, reversible, checked before DDL, key-free offline, kept by autogenerate."""

from __future__ import annotations

import io
import os
import secrets
from argparse import Namespace
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.operations.ops import MigrateOperation
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import pgtenancy.alembic  # noqa: F401 (registers the operations)
from pgtenancy.alembic.compare import tenant_spec
from pgtenancy.alembic.seal import (
    AddTenantSealKeyOp,
    CreateTenantSealOp,
    HideTenantActivityOp,
    SealTenantIsolationOp,
)
from pgtenancy.catalog import SchemaMismatchError, table_policies
from pgtenancy.ddl import POLICY_NAME
from pgtenancy.errors import ConfigurationError
from pgtenancy.example.models import metadata
from pgtenancy.testing import TestDatabase, TestRoles, TestServer
from tests.alembic_support import alembic_config, empty_database, run_sql_script
from tests.seal_support import role_settings

KEY = secrets.token_bytes(32)
KEY_ENV = "PGTENANCY_TEST_SEAL_KEY"
TABLES = [spec for spec in map(tenant_spec, metadata.sorted_tables) if spec is not None]


@pytest.fixture
def migrated(
    pgtenancy_server: TestServer, pgtenancy_roles: TestRoles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestDatabase]:
    """A fresh database upgraded by the example migrations (tenant tables isolated and granted)."""
    with empty_database(pgtenancy_server, pgtenancy_roles) as database:
        config, _ = alembic_config(monkeypatch, database.url("owner"))
        config.cmd_opts = Namespace(x=["app_role=" + pgtenancy_roles.app])
        command.upgrade(config, "head")
        yield database


@pytest.fixture
def owner(migrated: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[Connection]:
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    engine = create_engine(migrated.url("owner"), poolclass=NullPool)
    with engine.connect() as conn:
        yield conn
        conn.rollback()
    engine.dispose()


def operations(conn: Connection) -> Operations:
    return Operations(MigrationContext.configure(conn))


def policy_using(conn: Connection, table: str) -> str:
    return next(p.using for p in table_policies(conn, table) if p.name == POLICY_NAME)


def test_the_operations_are_registered_and_each_reverses_the_other():
    for name in (
        "create_tenant_seal",
        "drop_tenant_seal",
        "add_tenant_seal_key",
        "remove_tenant_seal_key",
        "seal_tenant_isolation",
        "unseal_tenant_isolation",
        "hide_tenant_activity",
        "show_tenant_activity",
    ):
        assert callable(getattr(Operations, name)), name
    operations: list[MigrateOperation] = [
        CreateTenantSealOp(),
        AddTenantSealKeyOp("k1"),
        SealTenantIsolationOp(TABLES[0]),
        HideTenantActivityOp("app"),
    ]
    for operation in operations:
        reverse = operation.reverse()
        assert type(reverse) is not type(operation)
        assert type(reverse.reverse()) is type(operation)
        assert vars(reverse.reverse()) == vars(operation)


def test_sealing_and_unsealing_every_table_keeps_the_rest_of_the_policy(owner: Connection):
    op = operations(owner)
    plain = {spec.table: policy_using(owner, spec.table) for spec in TABLES}
    for _ in range(2):  # idempotent
        op.create_tenant_seal()
        op.add_tenant_seal_key("k1", key_env=KEY_ENV)
    for spec in TABLES:
        op.seal_tenant_isolation(spec.table, spec.column, key_type=spec.key_type)
        sealed = policy_using(owner, spec.table)
        assert "pgtenancy_seal.current_tenant()" in sealed and "current_setting" not in sealed
        assert (
            next(p.with_check for p in table_policies(owner, spec.table) if p.name == POLICY_NAME) == sealed
        )
    with pytest.raises(DBAPIError, match="depend"), owner.begin_nested():  # a policy still uses it
        op.drop_tenant_seal()
    for spec in TABLES:
        op.unseal_tenant_isolation(spec.table, spec.column, key_type=spec.key_type)
        assert policy_using(owner, spec.table) == plain[spec.table]
    op.drop_tenant_seal()
    assert owner.execute(text("SELECT to_regnamespace('pgtenancy_seal')")).scalar() is None


def test_sealing_checks_the_catalog_before_any_ddl(owner: Connection):
    op = operations(owner)
    with pytest.raises(SchemaMismatchError, match="create_tenant_seal"):
        op.seal_tenant_isolation(TABLES[0].table, TABLES[0].column)
    op.create_tenant_seal()
    owner.exec_driver_sql("CREATE TABLE loose (tenant_id uuid NOT NULL)")
    with pytest.raises(SchemaMismatchError, match="enable_tenant_isolation"):
        op.seal_tenant_isolation("loose")
    with pytest.raises(ConfigurationError, match="PGTENANCY_NO_SUCH_KEY"):
        op.add_tenant_seal_key("k1", key_env="PGTENANCY_NO_SUCH_KEY")
    os.environ["PGTENANCY_SHORT_KEY"] = "abcd"
    try:
        with pytest.raises(ConfigurationError, match="at least 32"):
            op.add_tenant_seal_key("k1", key_env="PGTENANCY_SHORT_KEY")
    finally:
        del os.environ["PGTENANCY_SHORT_KEY"]
    with pytest.raises(ConfigurationError, match="key id"):
        op.add_tenant_seal_key("K 1")


def test_the_offline_script_holds_no_key_and_builds_the_seal(
    migrated: TestDatabase, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True}
    )
    op = Operations(context)
    op.create_tenant_seal()
    op.add_tenant_seal_key("k1", key_env=KEY_ENV)
    for spec in TABLES:
        op.seal_tenant_isolation(spec.table, spec.column, key_type=spec.key_type)
    script = buffer.getvalue()
    assert KEY.hex() not in script.lower() and "printenv " + KEY_ENV in script
    run_sql_script(migrated.url("owner"), script)
    engine = create_engine(migrated.url("owner"), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert all("current_tenant()" in policy_using(conn, spec.table) for spec in TABLES)
    finally:
        engine.dispose()


def test_autogenerate_keeps_sealed_policies(owner: Connection):
    """Proposing the plain policy again would silently undo the seal."""
    op = operations(owner)
    op.create_tenant_seal()
    for spec in TABLES:
        op.seal_tenant_isolation(spec.table, spec.column, key_type=spec.key_type)
    script = produce_migrations(MigrationContext.configure(owner, opts={"pgtenancy_app_roles": []}), metadata)
    assert [type(o).__name__ for o in script.upgrade_ops.ops] == []
    owner.exec_driver_sql(f"ALTER POLICY {POLICY_NAME} ON {TABLES[0].table} USING (true) WITH CHECK (true)")
    script = produce_migrations(MigrationContext.configure(owner, opts={"pgtenancy_app_roles": []}), metadata)
    assert [type(o).__name__ for o in script.upgrade_ops.ops] == ["EnableTenantIsolationOp"]


def test_hiding_activity_sets_the_role_and_showing_resets_it(
    pgtenancy_server: TestServer, migrated: TestDatabase
):
    role = "pgt_seal_" + secrets.token_hex(3)
    engine = create_engine(migrated.url("admin"), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role}")
            op = operations(conn)
            op.hide_tenant_activity(role)
            settings = role_settings(conn, role)
            assert settings == ["track_activities=off", "pg_stat_statements.track_utility=off"]
            op.show_tenant_activity(role)
            assert role_settings(conn, role) is None  # no setting row left for the role
            conn.exec_driver_sql(f"DROP ROLE {role}")
    finally:
        engine.dispose()
