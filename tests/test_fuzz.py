"""Concurrency fuzz: many tasks, few connections, errors, cancellations and killed backends — no leak."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

import asyncpg
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pgtenancy import TenancyError, tenant_context
from tests.conftest import TENANTS

TASKS = 1200
CONCURRENCY = 40
SEED = 20261123
EXPECTED_FAILURES = (  # what killed backends and cancellations may raise, wrapped by SQLAlchemy or not
    DBAPIError,
    InterfaceError,
    OperationalError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresError,
    psycopg.Error,
)


async def _killer(admin_url, app_role, stop: asyncio.Event, kills: Counter):
    """Terminate a random backend of the app role every few milliseconds."""
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    rng = random.Random(SEED + 1)
    try:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.005, 0.03))
            async with admin.connect() as conn:
                pids = (
                    (
                        await conn.execute(
                            text("SELECT pid FROM pg_stat_activity WHERE usename = :r"), {"r": app_role}
                        )
                    )
                    .scalars()
                    .all()
                )
                if pids:
                    await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": rng.choice(pids)})
                    kills["terminated"] += 1
    finally:
        await admin.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_concurrency_fuzz_never_crosses_tenants(seeded, pgtenancy_engine_factory, driver):
    engine = pgtenancy_engine_factory(driver, engine_options={"pool_size": 4, "max_overflow": 0})
    rng = random.Random(SEED)
    outcomes: Counter = Counter()
    foreign_rows: list[tuple] = []
    committed: list[tuple[uuid.UUID, str]] = []
    limit = asyncio.Semaphore(CONCURRENCY)

    async def read(tenant):
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
        foreign_rows.extend((tenant, row) for row in rows if row != tenant)
        outcomes["read"] += 1

    async def write(tenant):
        marker = f"fuzz-{uuid.uuid4()}"
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": marker})
        committed.append((tenant, marker))
        outcomes["write"] += 1

    async def fail(tenant):
        async with engine.connect() as conn:
            try:
                await conn.execute(text("SELECT 1/0 FROM notes"))
            except DBAPIError:
                outcomes["statement_error"] += 1
            await conn.rollback()
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
            foreign_rows.extend((tenant, row) for row in rows if row != tenant)

    async def cancelled(tenant):
        async def slow():
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(0.05), tenant_id FROM notes"))

        task = asyncio.create_task(slow())
        await asyncio.sleep(rng.uniform(0.001, 0.02))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1

    operations = [read, read, read, write, fail, cancelled]

    async def one(n):
        tenant = TENANTS[n % len(TENANTS)]
        operation = rng.choice(operations)
        async with limit, tenant_context(tenant):
            try:
                await operation(tenant)
            except TenancyError:
                raise
            except EXPECTED_FAILURES:
                outcomes["connection_error"] += 1

    stop, kills = asyncio.Event(), Counter()
    killer = asyncio.create_task(
        _killer(seeded.url("admin", drivername="postgresql+asyncpg"), seeded.roles.app, stop, kills)
    )
    await asyncio.gather(*(one(n) for n in range(TASKS)))
    stop.set()
    await killer
    await engine.dispose()

    assert foreign_rows == []
    assert outcomes["read"] > TASKS // 4 and outcomes["write"] > TASKS // 10
    assert outcomes["statement_error"] > 0 and outcomes["cancelled"] > 0 and kills["terminated"] > 0

    admin = create_engine(seeded.url("admin"))
    with admin.connect() as conn:
        stored = dict(conn.execute(text("SELECT body, tenant_id FROM notes WHERE body LIKE 'fuzz-%'")).all())
        conn.execute(text("DELETE FROM notes WHERE body LIKE 'fuzz-%'"))
        conn.commit()
    admin.dispose()
    for tenant, marker in committed:
        assert stored.get(marker) == tenant
    print(dict(outcomes), dict(kills), f"committed={len(committed)}")


@pytest.mark.slow
def test_threaded_sync_fuzz_never_crosses_tenants(seeded, pgtenancy_engine_factory):
    """Sync engines are shared by threads: each thread's binding is its own."""
    from concurrent.futures import ThreadPoolExecutor

    engine = pgtenancy_engine_factory("psycopg", engine_options={"pool_size": 4, "max_overflow": 0})
    rng = random.Random(SEED + 2)
    plan = [(TENANTS[n % len(TENANTS)], rng.random()) for n in range(400)]

    def one(step):
        tenant, dice = step
        with tenant_context(tenant), engine.connect() as conn:
            if dice < 0.2:
                with pytest.raises(DBAPIError):
                    conn.execute(text("SELECT 1/0"))
                conn.rollback()
            rows = conn.execute(text("SELECT tenant_id FROM notes")).scalars().all()
        return [row for row in rows if row != tenant], len(rows)

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, plan))
    assert [foreign for foreign, _ in results if foreign] == []
    assert all(count > 0 for _, count in results)
