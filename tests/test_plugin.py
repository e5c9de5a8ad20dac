"""The pytest plugin as a user's suite sees it: their schema, their tests, a real server."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text

from pgtenancy import current_tenant_id
from pgtenancy.testing import TestServer

pytest_plugins = ["pytester"]

USER_CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def pgtenancy_schema():
    def build(conn, roles):
        conn.exec_driver_sql("CREATE TABLE docs (tenant_id bigint NOT NULL, body text)")
        conn.exec_driver_sql("ALTER TABLE docs ENABLE ROW LEVEL SECURITY")
        conn.exec_driver_sql("ALTER TABLE docs FORCE ROW LEVEL SECURITY")
        conn.exec_driver_sql(
            "CREATE POLICY p ON docs USING (tenant_id = "
            "(SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::bigint))"
        )
        conn.exec_driver_sql("GRANT SELECT, INSERT ON docs TO " + roles.app)
    return build
"""

USER_TESTS = """
from sqlalchemy import text
from pgtenancy import tenant_context

def test_each_module_gets_the_template_schema(pgtenancy_engine_factory, pgtenancy_roles):
    engine = pgtenancy_engine_factory("psycopg", key_type="int")
    for tenant in (1, 2):
        with tenant_context(tenant), engine.begin() as conn:
            conn.execute(text("INSERT INTO docs (tenant_id, body) VALUES (:t, 'x')"), {"t": tenant})
    with tenant_context(1), engine.connect() as conn:
        assert conn.execute(text("SELECT tenant_id FROM docs")).scalars().all() == [1]
        assert conn.execute(text("SELECT current_user")).scalar_one() == pgtenancy_roles.app

def test_databases_are_per_module(pgtenancy_database):
    assert pgtenancy_database.name.startswith("pgt_test_user_suite_")
"""


def test_a_users_suite_runs_and_leaves_nothing_behind(
    pytester: pytest.Pytester, pgtenancy_server: TestServer
):
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user_suite=USER_TESTS)
    engine = create_engine(pgtenancy_server.admin_url)
    query = text(
        "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 'pgt_%'), "
        "(SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgt_%')"
    )
    with engine.connect() as conn:
        before = conn.execute(query).one()
    dsn = pgtenancy_server.admin_url.render_as_string(hide_password=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pgtenancy-dsn", dsn)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pgtenancy: the tests ran on the server named by --pgtenancy-dsn*"])
    with engine.connect() as conn:
        after = conn.execute(query).one()
    engine.dispose()
    assert after == before


def test_a_failing_user_test_fails(pytester: pytest.Pytester, pgtenancy_server: TestServer):
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(
        test_leaky="""
from sqlalchemy import text
from pgtenancy import tenant_context

def test_superuser_sees_everything(pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg", role="admin", verify_role=False, key_type="int")
    with tenant_context(1), engine.connect() as conn:
        conn.execute(text("INSERT INTO docs VALUES (2, 'other tenant')"))
        assert conn.execute(text("SELECT count(*) FROM docs")).scalar_one() == 0
"""
    )
    dsn = pgtenancy_server.admin_url.render_as_string(hide_password=False)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pgtenancy-dsn", dsn).assert_outcomes(failed=1)


def test_pgtenancy_tenant_binds_a_fresh_tenant(pgtenancy_tenant):
    assert current_tenant_id() == pgtenancy_tenant
    assert isinstance(pgtenancy_tenant, uuid.UUID)


@pytest.mark.pgtenancy_tenant(202)
async def test_pgtenancy_tenant_marker_reaches_async_tests(
    pgtenancy_tenant, seeded, pgtenancy_engine_factory
):
    engine = pgtenancy_engine_factory("asyncpg", key_type="int")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT tenant_id FROM int_notes"))).scalars().all() == [202]
    await engine.dispose()
