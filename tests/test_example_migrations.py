"""The example application's migrations: upgrade, catalog, isolation for the app role, downgrade, --sql."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pgtenancy import instrument, tenant_context
from pgtenancy.catalog import (
    indexes_leading_with,
    owned_sequences,
    role_info,
    sequence_privileges,
    table_policies,
    table_privileges,
    table_security,
)
from pgtenancy.ddl import POLICY_NAME
from pgtenancy.example.migrate import migrations_config
from pgtenancy.testing import TestDatabase, TestRoles, TestServer
from tests.alembic_support import empty_database, run_sql_script

TENANT_A, TENANT_B = 101, 202
EXPECTED_POLICY = (
    "(tenant_id = ( SELECT (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::"
    'bigint AS "nullif"))'
)


@pytest.fixture(scope="module")
def database(
    pgtenancy_server: TestServer, pgtenancy_roles: TestRoles, app_role: tuple[str, str]
) -> Iterator[TestDatabase]:
    """An empty database, dropped before the app role (whose grants live in it)."""
    with empty_database(pgtenancy_server, pgtenancy_roles) as database:
        yield database


@pytest.fixture(scope="module")
def app_role(pgtenancy_server: TestServer) -> Iterator[tuple[str, str]]:
    """A unique app role name and password (roles are shared by the whole server); dropped at the end."""
    role = ("pgt_example_app_" + secrets.token_hex(3), secrets.token_hex(12))
    yield role
    engine = create_engine(pgtenancy_server.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql('DROP ROLE IF EXISTS "' + role[0] + '"')
    engine.dispose()


@pytest.fixture
def migrate(monkeypatch: pytest.MonkeyPatch, database: TestDatabase, app_role: tuple[str, str]):
    """Run an alembic command on the example migrations as the superuser (the revision creates a role)."""
    monkeypatch.setenv("PGTENANCY_APP_ROLE", "pgt_not_this_role")  # -x app_role=... wins over the variable
    buffer = io.StringIO()
    config = migrations_config(
        database.url("admin", drivername="postgresql+asyncpg"),
        app_role=app_role[0],
        app_password=app_role[1],
        stdout=buffer,
    )

    def run(name: str, *args: object, **kwargs: object) -> str:
        getattr(command, name)(config, *args, **kwargs)
        return buffer.getvalue()

    return run


@pytest.fixture
def admin(database: TestDatabase) -> Iterator[Engine]:
    engine = create_engine(database.url("admin"), poolclass=NullPool)
    yield engine
    engine.dispose()


def _app_engine(database: TestDatabase, app_role: tuple[str, str]) -> AsyncEngine:
    url = database.server.url(
        database=database.name, username=app_role[0], password=app_role[1], drivername="postgresql+asyncpg"
    )
    return instrument(create_async_engine(url, poolclass=NullPool), key_type="int")


def test_upgrade_isolates_tenant_tables_and_creates_the_app_role(migrate, admin, app_role):
    migrate("upgrade", "head")
    with admin.connect() as conn:
        for table in ("projects", "tasks"):
            security = table_security(conn, table)
            assert security is not None and security.rls_enabled and security.rls_forced
            (policy,) = table_policies(conn, table)
            assert policy.name == POLICY_NAME and policy.permissive and policy.command == "ALL"
            assert policy.roles == ("public",)
            assert policy.using == policy.with_check == EXPECTED_POLICY
            assert indexes_leading_with(conn, table, "tenant_id") == ["pk_" + table]
            assert table_privileges(conn, app_role[0], table) == {"SELECT", "INSERT", "UPDATE", "DELETE"}
            (sequence,) = owned_sequences(conn, table)
            assert sequence_privileges(conn, app_role[0], sequence) == {"USAGE"}
        plans = table_security(conn, "plans")
        assert plans is not None and not plans.rls_enabled
        assert table_policies(conn, "plans") == []
        assert table_privileges(conn, app_role[0], "plans") == {"SELECT"}
        role = role_info(conn, app_role[0])
        assert role is not None and role.login
        assert not (role.superuser or role.bypassrls or role.createdb or role.createrole or role.replication)


async def test_isolation_holds_for_the_app_role(migrate, admin, database, app_role):
    await asyncio.to_thread(migrate, "upgrade", "head")  # env.py runs its own event loop
    with admin.begin() as conn:
        conn.execute(
            text("INSERT INTO plans (id, name, max_projects) VALUES (1, 'free', 3) ON CONFLICT DO NOTHING")
        )
    engine = _app_engine(database, app_role)
    project_ids = {}
    for tenant in (TENANT_A, TENANT_B):
        async with tenant_context(tenant), engine.begin() as conn:
            project_ids[tenant] = (
                await conn.execute(text("INSERT INTO projects (name, plan_id) VALUES ('p', 1) RETURNING id"))
            ).scalar_one()
            await conn.execute(
                text("INSERT INTO tasks (project_id, title) VALUES (:p, 'one'), (:p, 'two')"),
                {"p": project_ids[tenant]},
            )

    async with tenant_context(TENANT_A), engine.begin() as conn:
        # a query that forgot its tenant filter still sees only the bound tenant's rows
        tenants = (await conn.execute(text("SELECT DISTINCT tenant_id FROM tasks"))).scalars().all()
        assert tenants == [TENANT_A]
        assert (await conn.execute(text("SELECT count(*) FROM plans"))).scalar_one() == 1
        # another tenant's rows are neither updated nor deleted
        changed = await conn.execute(
            text("UPDATE tasks SET done = true WHERE tenant_id = :t"), {"t": TENANT_B}
        )
        assert changed.rowcount == 0
        removed = await conn.execute(text("DELETE FROM projects WHERE tenant_id = :t"), {"t": TENANT_B})
        assert removed.rowcount == 0

    cross_tenant_writes = [
        ("INSERT INTO projects (tenant_id, name) VALUES (:b, 'intruder')", "row-level security"),
        ("UPDATE projects SET tenant_id = :b", "row-level security"),
        ("INSERT INTO tasks (project_id, title) SELECT :pb, 'x'", "foreign key"),
        ("TRUNCATE tasks", "permission denied"),
        ("INSERT INTO plans (id, name, max_projects) VALUES (2, 'x', 1)", "permission denied"),
    ]
    for statement, message in cross_tenant_writes:
        async with tenant_context(TENANT_A):
            with pytest.raises(DBAPIError, match=message):
                async with engine.begin() as conn:
                    await conn.execute(text(statement), {"b": TENANT_B, "pb": project_ids[TENANT_B]})
    await engine.dispose()

    with admin.connect() as conn:
        counts = dict(conn.execute(text("SELECT tenant_id, count(*) FROM tasks GROUP BY 1")).all())
    assert counts == {TENANT_A: 2, TENANT_B: 2}


def test_the_revision_matches_the_models(migrate):
    migrate("upgrade", "head")
    migrate("check")  # autogenerate finds nothing to add: raises AutogenerateDiffsDetected otherwise


def test_downgrade_removes_everything_and_upgrade_again_works(migrate, admin, app_role):
    migrate("upgrade", "head")
    migrate("downgrade", "base")
    with admin.connect() as conn:
        for table in ("plans", "projects", "tasks"):
            assert table_security(conn, table) is None
        assert role_info(conn, app_role[0]) is None
    migrate("upgrade", "head")
    with admin.connect() as conn:
        assert role_info(conn, app_role[0]) is not None
        assert len(table_policies(conn, "tasks")) == 1


def test_offline_sql_is_plain_sql_that_postgresql_runs(
    migrate, pgtenancy_server: TestServer, pgtenancy_roles: TestRoles, app_role
):
    script = migrate("upgrade", "head", sql=True)
    assert "CREATE POLICY pgtenancy_tenant_isolation ON projects AS PERMISSIVE FOR ALL TO PUBLIC" in script
    assert (
        "USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::bigint))"
        in script
    )
    assert "ALTER TABLE tasks FORCE ROW LEVEL SECURITY" in script
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE tasks TO " + app_role[0] in script
    assert "REVOKE TRUNCATE, REFERENCES, TRIGGER ON TABLE tasks FROM " + app_role[0] in script
    assert "%%" not in script
    with empty_database(pgtenancy_server, pgtenancy_roles) as fresh:
        run_sql_script(fresh.url("admin"), script)
        engine = create_engine(fresh.url("admin"), poolclass=NullPool)
        with engine.connect() as conn:
            security = table_security(conn, "tasks")
            assert security is not None and security.rls_forced
            assert table_policies(conn, "projects")[0].using == EXPECTED_POLICY
            assert table_privileges(conn, app_role[0], "tasks") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
        engine.dispose()


def test_offline_downgrade_reverses_in_order(migrate, app_role):
    script = migrate("downgrade", "0001:base", sql=True)
    order = [
        "REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLE tasks FROM " + app_role[0],
        "DROP ROLE IF EXISTS " + app_role[0],
        "DROP POLICY IF EXISTS pgtenancy_tenant_isolation ON tasks",
        "ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY",
        "ALTER TABLE tasks DISABLE ROW LEVEL SECURITY",
        "DROP TABLE tasks",
    ]
    positions = [script.index(fragment) for fragment in order]
    assert positions == sorted(positions)
