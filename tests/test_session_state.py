"""What a tenant leaves in a pooled session (temp tables, holdable cursors, session settings) dies before
another tenant's transaction begins on that connection."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from pgtenancy import tenant_context, without_tenant
from tests.conftest import ROWS_PER_TENANT, TENANTS

A, B = TENANTS[0], TENANTS[1]


@pytest.fixture(scope="module", autouse=True)
def temporary_tables(seeded):
    """The test databases deny TEMPORARY; these cases need the app role to leave temp tables behind."""
    engine = create_engine(seeded.url("admin"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'GRANT TEMPORARY ON DATABASE "{seeded.name}" TO "{seeded.roles.app}"')
    yield
    with engine.connect() as conn:
        conn.exec_driver_sql(f'REVOKE TEMPORARY ON DATABASE "{seeded.name}" FROM "{seeded.roles.app}"')
    engine.dispose()


LEAVE_BEHIND = {
    "temp table": "CREATE TEMP TABLE loot AS SELECT tenant_id, body FROM notes",
    "temp table shadowing a real one": "CREATE TEMPORARY TABLE notes AS SELECT * FROM public.notes",
    "holdable cursor": "DECLARE loot CURSOR WITH HOLD FOR SELECT tenant_id FROM notes",
    "session setting": "SET search_path = pg_temp, public",
}
READ_BACK = {
    "temp table": "SELECT count(*) FROM loot",
    "temp table shadowing a real one": f"SELECT count(*) FROM notes WHERE tenant_id = '{A}'",
    "holdable cursor": "FETCH ALL FROM loot",
    "session setting": "SELECT current_setting('search_path')",
}


def _left(kind, rows):
    """Whether the next tenant's read found what the first one left."""
    if kind == "holdable cursor":
        return len(rows) > 0
    if kind == "session setting":
        return rows[0][0].startswith("pg_temp")
    return rows[0][0] > 0


@pytest.mark.parametrize("kind", list(LEAVE_BEHIND))
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_session_state_does_not_reach_the_next_tenant(seeded, pgtenancy_engine_factory, driver, kind):
    engine = pgtenancy_engine_factory(driver, engine_options={"pool_size": 1, "max_overflow": 0})
    async with tenant_context(A), engine.begin() as conn:
        await conn.execute(text(LEAVE_BEHIND[kind]))
    async with tenant_context(A), engine.connect() as conn:  # the same tenant may still use what it made
        assert _left(kind, (await conn.execute(text(READ_BACK[kind]))).all())
    for next_binding in (tenant_context(B), without_tenant()):
        async with next_binding, engine.connect() as conn:
            try:
                rows = (await conn.execute(text(READ_BACK[kind]))).all()
            except DBAPIError as error:  # the table or cursor is gone
                assert "does not exist" in str(error)
            else:
                assert not _left(kind, rows)
    await engine.dispose()


def test_sync_session_state_does_not_reach_the_next_tenant(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg", engine_options={"pool_size": 1, "max_overflow": 0})
    with tenant_context(A), engine.begin() as conn:
        conn.execute(text(LEAVE_BEHIND["temp table"]))
    with tenant_context(B), engine.connect() as conn, pytest.raises(DBAPIError, match="does not exist"):
        conn.execute(text(READ_BACK["temp table"]))
    with tenant_context(B), engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar_one() == ROWS_PER_TENANT[B]
