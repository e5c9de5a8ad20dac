"""Nothing tenant-related survives COMMIT or ROLLBACK on a pooled connection."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from pgtenancy import tenant_context, uninstrument
from tests.conftest import TENANTS

A = TENANTS[0]
PROBE = "SELECT current_setting('app.current_tenant_id', true)"


async def outside_any_transaction(conn, driver):
    """The setting as the raw driver connection sees it in autocommit mode, beside SQLAlchemy."""
    raw = (await conn.get_raw_connection()).driver_connection
    if driver == "asyncpg":
        return await raw.fetchval(PROBE)
    await raw.set_autocommit(True)
    value = (await (await raw.execute(PROBE)).fetchone())[0]
    await raw.set_autocommit(False)
    return value


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
@pytest.mark.parametrize("ending", ["commit", "rollback", "error"])
async def test_async_raw_connection_shows_no_tenant_after_the_transaction(
    seeded, pgtenancy_engine_factory, driver, ending
):
    engine = pgtenancy_engine_factory(driver, engine_options={"pool_size": 1})
    async with tenant_context(A), engine.connect() as conn:
        assert (await conn.execute(text(PROBE))).scalar_one() == str(A)
        if ending == "error":
            with pytest.raises(Exception, match="division by zero"):
                await conn.execute(text("SELECT 1/0"))
        await (conn.commit() if ending == "commit" else conn.rollback())
        leftover = await outside_any_transaction(conn, driver)
    assert leftover in (None, "")
    await engine.dispose()


def test_sync_raw_connection_shows_no_tenant_after_commit(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg", engine_options={"pool_size": 1})
    with tenant_context(A), engine.connect() as conn:
        assert conn.execute(text(PROBE)).scalar_one() == str(A)
        conn.commit()
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        raw.autocommit = True
        leftover = raw.execute(PROBE).fetchone()[0]
        raw.autocommit = False
    assert leftover in (None, "")


async def driver_log(conn, driver, monkeypatch):
    """The simple-query messages the driver sends from now on: asyncpg's query log, or psycopg's commands."""
    sent = []
    if driver == "asyncpg":
        raw = (await conn.get_raw_connection()).driver_connection
        raw.add_query_logger(lambda record: sent.append(record.query))
        return sent
    import psycopg

    command = psycopg.AsyncConnection._exec_command

    def recording(self, query, *args, **kwargs):
        sent.append(query.decode() if isinstance(query, bytes) else query)
        return command(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "_exec_command", recording)
    return sent


@pytest.mark.parametrize("mode", ["begin", "set_config", "set_local"])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_every_mode_is_transaction_local(seeded, pgtenancy_engine_factory, mode, driver, monkeypatch):
    engine = pgtenancy_engine_factory(driver, mode=mode, engine_options={"pool_size": 1})
    async with tenant_context(A), engine.connect() as conn:
        sent = await driver_log(conn, driver, monkeypatch)
        assert (await conn.execute(text(PROBE))).scalar_one() == str(A)
        await conn.commit()
        leftover = await outside_any_transaction(conn, driver)
    assert leftover in (None, "")
    separate = [s for s in sent if s.startswith(("SELECT pg_catalog.set_config", "SET LOCAL"))]
    # the default mode sends the tenant inside the driver's BEGIN message: no statement of its own
    assert len(separate) == (0 if mode == "begin" else 1), sent
    if driver == "asyncpg":  # its log shows the BEGIN message itself
        assert len([s for s in sent if s.startswith("BEGIN") and "SET LOCAL" in s]) == (mode == "begin"), sent
    await engine.dispose()


async def test_uninstrument_leaves_armed_connections_carrying_nothing(seeded, pgtenancy_engine_factory):
    """A connection governed before uninstrument() keeps pgtenancy's class but sends no tenant after it."""
    engine = pgtenancy_engine_factory("asyncpg", engine_options={"pool_size": 1})
    async with tenant_context(A), engine.connect() as conn:
        assert (await conn.execute(text(PROBE))).scalar_one() == str(A)
        raw = (await conn.get_raw_connection()).driver_connection
    uninstrument(engine)
    async with tenant_context(A), engine.connect() as conn:  # the same driver connection, no tenant sent
        assert (await conn.get_raw_connection()).driver_connection is raw
        assert (await conn.execute(text(PROBE))).scalar_one() in (None, "")
    await engine.dispose()


READ_TENANTS = "SELECT DISTINCT tenant_id FROM notes"


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_pool_pre_ping_pings_and_the_next_transaction_carries_its_tenant(
    seeded, pgtenancy_engine_factory, driver
):
    # psycopg's ping switches the connection to AUTOCOMMIT for one statement, asyncpg's wraps it in a
    # transaction of its own: neither is refused, and neither leaks into the transaction that follows
    engine = pgtenancy_engine_factory(driver, engine_options={"pool_size": 1, "pool_pre_ping": True})
    for tenant in (A, TENANTS[1], A):
        async with tenant_context(tenant), engine.connect() as conn:
            assert (await conn.execute(text(READ_TENANTS))).scalars().all() == [tenant]
    await engine.dispose()


def test_pool_pre_ping_on_a_sync_engine(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg", engine_options={"pool_size": 1, "pool_pre_ping": True})
    for tenant in (A, TENANTS[1]):
        with tenant_context(tenant), engine.connect() as conn:
            assert conn.execute(text(READ_TENANTS)).scalars().all() == [tenant]
