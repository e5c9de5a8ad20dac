"""Plain SQL for non-Alembic users: sqlgen, the ``pgtenancy sql`` commands and the sql/ templates."""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import URL, Connection, create_engine, text
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

TEMPLATES = Path(__file__).resolve().parent.parent / "sql"
PSQL = shutil.which("psql")


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


def psql(url: URL, template: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run one sql/ template with psql, passing ``variables`` as ``-v name=value``."""
    options = [arg for name, value in variables.items() for arg in ("-v", name + "=" + value)]
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return subprocess.run(
        [PSQL, "-X", "-q", "-d", dsn, *options, "-f", str(TEMPLATES / template)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def owner(pgtenancy_database: TestDatabase) -> Iterator[Connection]:
    engine = create_engine(pgtenancy_database.url("owner"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE by_template (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE by_operation (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL)")
        yield conn
        conn.exec_driver_sql("DROP TABLE by_template, by_operation")
    engine.dispose()


@pytest.mark.skipif(PSQL is None, reason="the sql/ templates are psql scripts and psql is not installed")
def test_templates_create_what_the_operations_create(owner: Connection, pgtenancy_database: TestDatabase):
    url = pgtenancy_database.url("owner")
    variables = {"schema": "public", "table": "by_template", "column": "tenant_id", "type": "uuid"}
    for _ in range(2):
        result = psql(url, "enable_tenant_isolation.sql", setting="app.current_tenant_id", **variables)
        assert result.returncode == 0, result.stderr
    Operations(MigrationContext.configure(owner)).enable_tenant_isolation("by_operation")

    template, operation = table_policies(owner, "by_template"), table_policies(owner, "by_operation")
    assert [(p.name, p.using, p.with_check) for p in template] == [
        (p.name, p.using, p.with_check) for p in operation
    ]
    assert table_security(owner, "by_template").rls_forced  # type: ignore[union-attr]
    assert indexes_leading_with(owner, "by_template", "tenant_id") == ["pgtenancy_ix_by_template_tenant_id"]

    result = psql(url, "disable_tenant_isolation.sql", **variables)
    assert result.returncode == 0, result.stderr
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


@pytest.mark.skipif(PSQL is None, reason="the sql/ templates are psql scripts and psql is not installed")
def test_role_and_grant_templates(owner: Connection, pgtenancy_database: TestDatabase, role: str):
    for _ in range(2):
        result = psql(pgtenancy_database.url("admin"), "create_tenant_role.sql", role=role)
        assert result.returncode == 0, result.stderr
    info = role_info(owner, role)
    assert info is not None and info.login and not (info.superuser or info.bypassrls or info.createrole)

    owner.exec_driver_sql("GRANT TRUNCATE ON by_template TO " + role)
    variables = {"role": role, "schema": "public", "table": "by_template"}
    result = psql(pgtenancy_database.url("owner"), "grant_tenant_access.sql", **variables)
    assert result.returncode == 0, result.stderr
    assert table_privileges(owner, role, "by_template") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert sequence_privileges(owner, role, owned_sequences(owner, "by_template")[0]) == {"USAGE"}


@pytest.mark.skipif(PSQL is None, reason="the sql/ templates are psql scripts and psql is not installed")
def test_role_template_refuses_an_existing_role_that_bypasses_rls(
    pgtenancy_database: TestDatabase, role: str
):
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE ROLE " + role + " BYPASSRLS")
    engine.dispose()
    result = psql(pgtenancy_database.url("admin"), "create_tenant_role.sql", role=role)
    assert result.returncode != 0 and "BYPASSRLS" in result.stderr


@pytest.mark.skipif(PSQL is None, reason="the sql/ templates are psql scripts and psql is not installed")
def test_revoke_temporary_template(pgtenancy_database: TestDatabase):
    app = pgtenancy_database.roles.app
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    has_temporary = text("SELECT has_database_privilege(:r, current_database(), 'TEMPORARY')")
    try:
        for _ in range(2):
            result = psql(pgtenancy_database.url("admin"), "revoke_temporary_tables.sql", role=app)
            assert result.returncode == 0, result.stderr
        with engine.connect() as conn:
            assert conn.execute(has_temporary, {"r": app}).scalar_one() is False
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(render_sql(temporary_statements(app, allow=True)))
            assert conn.execute(has_temporary, {"r": app}).scalar_one() is True
        engine.dispose()
