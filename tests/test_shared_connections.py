"""A connection or session shared by concurrent tasks or threads bound to different tenants never crosses.

Careless applications share one: a module-level session, a session cached on the app, a fan-out over one
connection. Each task must get its own tenant's rows or a ``TenantSwitchError`` (or the driver's own
refusal of concurrent use) — never another tenant's rows.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pgtenancy import TenantSwitchError, tenant_context
from tests.conftest import TENANTS

ROUNDS = 200
READ = text("SELECT DISTINCT tenant_id FROM notes")
MODES = ["begin", "set_config", "set_local"]


def tally(outcomes: Counter, tenant, outcome) -> None:
    """Count what a task saw: its own rows, a refusal, another error, or (the failure) foreign rows."""
    if isinstance(outcome, TenantSwitchError):
        outcomes["refused"] += 1
    elif isinstance(outcome, BaseException):
        outcomes["error:" + type(outcome).__name__] += 1
    elif set(outcome) <= {tenant}:
        outcomes["own"] += 1
    else:
        outcomes["foreign"] += 1


async def shared_rounds(engine, *, session: bool) -> Counter:
    """ROUNDS rounds of two tasks, bound to A and B, reading through one shared connection or session."""
    outcomes: Counter = Counter()
    factory = async_sessionmaker(engine)
    for n in range(ROUNDS):
        shared = factory() if session else await engine.connect()

        async def read(tenant, shared=shared):
            async with tenant_context(tenant):
                return (await shared.execute(READ)).scalars().all()

        first, second = (TENANTS[0], TENANTS[1]) if n % 2 else (TENANTS[1], TENANTS[0])
        results = await asyncio.gather(read(first), read(second), return_exceptions=True)
        for tenant, outcome in zip((first, second), results, strict=True):
            tally(outcomes, tenant, outcome)
        try:
            await shared.close()
        except Exception as error:
            outcomes["close:" + type(error).__name__] += 1
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
@pytest.mark.parametrize("shared", ["connection", "session"])
async def test_a_shared_async_connection_or_session_never_serves_foreign_rows(
    seeded, pgtenancy_engine_factory, driver, mode, shared
):
    engine = pgtenancy_engine_factory(driver, mode=mode, engine_options={"pool_size": 2})
    outcomes = await shared_rounds(engine, session=shared == "session")
    await engine.dispose()
    print(driver, mode, shared, dict(outcomes))
    assert outcomes["foreign"] == 0, dict(outcomes)
    assert outcomes["own"] >= ROUNDS, dict(outcomes)  # the first task of each round gets its rows
    assert outcomes["refused"] > 0, dict(outcomes)  # the race was really run


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_sync_session_shared_by_threads_never_serves_foreign_rows(seeded, pgtenancy_engine_factory, mode):
    engine = pgtenancy_engine_factory("psycopg", mode=mode, engine_options={"pool_size": 2})
    factory = sessionmaker(engine)
    outcomes: Counter = Counter()
    for n in range(ROUNDS):
        session = factory()
        start = threading.Barrier(2)
        results: dict[object, object] = {}

        def read(tenant, session=session, start=start, results=results):
            start.wait()
            try:
                with tenant_context(tenant):
                    results[tenant] = session.execute(READ).scalars().all()
            except Exception as error:
                results[tenant] = error

        pair = (TENANTS[0], TENANTS[1]) if n % 2 else (TENANTS[1], TENANTS[0])
        threads = [threading.Thread(target=read, args=(tenant,)) for tenant in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for tenant in pair:
            tally(outcomes, tenant, results[tenant])
        try:
            session.close()
        except Exception as error:
            outcomes["close:" + type(error).__name__] += 1
    engine.dispose()
    print("psycopg", mode, dict(outcomes))
    assert outcomes["foreign"] == 0, dict(outcomes)
    assert outcomes["own"] >= ROUNDS // 2, dict(outcomes)


def _creator_engines(seeded):
    """Engines whose driver connections come from the user's own creator, not SQLAlchemy's connect."""
    import asyncpg
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    url = seeded.url("app")
    query = url.query
    params = {"user": url.username, "password": url.password, "dbname": url.database, **query}

    async def asyncpg_creator():
        return await asyncpg.connect(
            user=url.username,
            password=url.password,
            database=url.database,
            host=query["host"],
            port=query["port"],
        )

    async def psycopg_creator():
        return await psycopg.AsyncConnection.connect(**params)

    return (
        create_async_engine("postgresql+asyncpg://", async_creator=asyncpg_creator, pool_size=2),
        create_async_engine("postgresql+psycopg://", async_creator=psycopg_creator, pool_size=2),
        create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(**params), pool_size=2),
    )


async def test_connections_from_a_users_creator_are_guarded_too(seeded):
    from pgtenancy import instrument, instrumentation_path

    asyncpg_engine, psycopg_engine, sync_engine = (instrument(e) for e in _creator_engines(seeded))
    try:
        for engine in (asyncpg_engine, psycopg_engine):
            assert instrumentation_path(engine) == "driver"
            outcomes = await shared_rounds(engine, session=False)
            assert outcomes["foreign"] == 0 and outcomes["refused"] > 0, dict(outcomes)
        with tenant_context(TENANTS[0]), sync_engine.connect() as conn:
            assert set(conn.execute(READ).scalars()) == {TENANTS[0]}
            with tenant_context(TENANTS[1]), pytest.raises(TenantSwitchError):
                conn.execute(READ)
    finally:
        await asyncpg_engine.dispose()
        await psycopg_engine.dispose()
        sync_engine.dispose()
