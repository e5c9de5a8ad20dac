"""Plain SQL for non-Alembic users: sqlgen and the ``pgtenancy sql`` commands, run against a database."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator

import pytest
import typer
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

import pgtenancy.alembic  # noqa: F401 - registers the operations compared with below
from pgtenancy.catalog import (
    indexes_leading_with,
    owned_sequences,
    role_info,
    sequence_privileges,
    table_policies,
    table_privileges,
    table_security,
)
from pgtenancy.cli.sql import register
from pgtenancy.ddl import temporary_statements
from pgtenancy.sqlgen import render_enable_sql, render_grant_sql, render_sql
from pgtenancy.testing import TestDatabase
from tests.seal_support import role_settings


def test_rendered_sql_is_what_the_offline_migration_writes():
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    Operations(context).enable_tenant_isolation("projects", "org_id", schema="crm", key_type="str")
    assert render_enable_sql("projects", "org_id", "crm", "str") == buffer.getvalue().replace(";\n\n", ";\n")


def test_cli_prints_the_sql_or_refuses_bad_input():
    app = typer.Typer()
    app.command()(lambda: None)
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["sql", "enable", "--table", "projects", "--key-type", "int"])
    assert result.exit_code == 0 and result.stdout == render_enable_sql("projects", key_type="int")
    result = runner.invoke(app, ["sql", "grant", "--role", "app", "--table", "projects"])
    assert result.exit_code == 0 and result.stdout == render_grant_sql("app", "projects")
    result = runner.invoke(app, ["sql", "enable", "--table", "projects", "--setting", "x'; DROP TABLE t; --"])
    assert result.exit_code == 2 and "invalid setting name" in result.stderr and result.stdout == ""


def run_sql_command(url: URL, *args: str) -> None:
    """Print the SQL of ``pgtenancy sql ARGS`` and run it on ``url``, as a user pipes it into psql."""
    app = typer.Typer()
    app.command()(lambda: None)
    register(app)
    result = CliRunner().invoke(app, ["sql", *args])
    assert result.exit_code == 0, result.stderr
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(result.stdout)
    finally:
        engine.dispose()


@pytest.fixture
def owner(pgtenancy_database: TestDatabase) -> Iterator[Connection]:
    engine = create_engine(pgtenancy_database.url("owner"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE by_template (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE by_operation (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL)")
        yield conn
        conn.exec_driver_sql("DROP TABLE by_template, by_operation")
    engine.dispose()


def test_printed_sql_creates_what_the_operations_create(owner: Connection, pgtenancy_database: TestDatabase):
    url = pgtenancy_database.url("owner")
    for _ in range(2):  # idempotent
        run_sql_command(url, "enable", "--table", "by_template", "--schema", "public")
    Operations(MigrationContext.configure(owner)).enable_tenant_isolation("by_operation")

    template, operation = table_policies(owner, "by_template"), table_policies(owner, "by_operation")
    assert [(p.name, p.using, p.with_check) for p in template] == [
        (p.name, p.using, p.with_check) for p in operation
    ]
    assert table_security(owner, "by_template").rls_forced  # type: ignore[union-attr]
    assert indexes_leading_with(owner, "by_template", "tenant_id") == ["pgtenancy_ix_by_template_tenant_id"]

    run_sql_command(url, "disable", "--table", "by_template", "--schema", "public")
    security = table_security(owner, "by_template")
    assert security is not None and not security.rls_enabled and not security.rls_forced
    assert table_policies(owner, "by_template") == []
    assert indexes_leading_with(owner, "by_template", "tenant_id") == []


@pytest.fixture
def role(pgtenancy_database: TestDatabase) -> Iterator[str]:
    """A unique role name (roles are shared by the whole server), dropped after the test."""
    name = "pgt_tpl_" + secrets.token_hex(3)
    yield name
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if role_info(conn, name) is not None:
            conn.exec_driver_sql("DROP OWNED BY " + name)  # its grants in this database
        conn.exec_driver_sql("DROP ROLE IF EXISTS " + name)
    engine.dispose()


def test_printed_role_and_grant_sql(owner: Connection, pgtenancy_database: TestDatabase, role: str):
    for _ in range(2):
        run_sql_command(pgtenancy_database.url("admin"), "role", "--name", role)
    info = role_info(owner, role)
    assert info is not None and info.login and not (info.superuser or info.bypassrls or info.createrole)

    owner.exec_driver_sql("GRANT TRUNCATE ON by_template TO " + role)
    run_sql_command(pgtenancy_database.url("owner"), "grant", "--role", role, "--table", "by_template")
    assert table_privileges(owner, role, "by_template") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert sequence_privileges(owner, role, owned_sequences(owner, "by_template")[0]) == {"USAGE"}


def test_printed_role_sql_refuses_an_existing_role_that_bypasses_rls(
    pgtenancy_database: TestDatabase, role: str
):
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE ROLE " + role + " BYPASSRLS")
    engine.dispose()
    with pytest.raises(DBAPIError, match="BYPASSRLS"):
        run_sql_command(pgtenancy_database.url("admin"), "role", "--name", role)


def test_printed_revoke_temporary_sql(pgtenancy_database: TestDatabase):
    app = pgtenancy_database.roles.app
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    has_temporary = text("SELECT has_database_privilege(:r, current_database(), 'TEMPORARY')")
    try:
        for _ in range(2):
            run_sql_command(pgtenancy_database.url("admin"), "revoke-temporary", "--role", app)
        with engine.connect() as conn:
            assert conn.execute(has_temporary, {"r": app}).scalar_one() is False
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(render_sql(temporary_statements(app, allow=True)))
            assert conn.execute(has_temporary, {"r": app}).scalar_one() is True
        engine.dispose()


def test_printed_seal_sql_seals_like_the_operations(owner: Connection, pgtenancy_database: TestDatabase):
    """seal-schema, a key added as its comment says, seal and unseal: the policies the operations leave."""
    url = pgtenancy_database.url("owner")
    for _ in range(2):  # idempotent
        run_sql_command(url, "seal-schema")
    key = secrets.token_bytes(32)
    owner.execute(text("SELECT pgtenancy_seal.add_key('1', :key)"), {"key": key})
    op = Operations(MigrationContext.configure(owner))
    for table in ("by_template", "by_operation"):
        op.enable_tenant_isolation(table)
    run_sql_command(url, "seal", "--table", "by_template")
    op.seal_tenant_isolation("by_operation")
    template, operation = table_policies(owner, "by_template"), table_policies(owner, "by_operation")
    assert [(p.using, p.with_check) for p in template] == [(p.using, p.with_check) for p in operation]
    assert "pgtenancy_seal.current_tenant()" in template[0].using
    run_sql_command(url, "seal", "--table", "by_template", "--unseal")
    assert "current_setting" in table_policies(owner, "by_template")[0].using
    op.unseal_tenant_isolation("by_operation")
    op.drop_tenant_seal()
    for table in ("by_template", "by_operation"):
        op.disable_tenant_isolation(table)


def test_printed_hide_activity_sql(pgtenancy_database: TestDatabase, role: str):
    admin = pgtenancy_database.url("admin")
    engine = create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE ROLE " + role)
    engine.dispose()
    run_sql_command(admin, "hide-activity", "--role", role)
    engine = create_engine(admin, poolclass=NullPool)
    with engine.connect() as conn:
        settings = role_settings(conn, role)
    engine.dispose()
    assert settings == ["track_activities=off", "pg_stat_statements.track_utility=off"]
