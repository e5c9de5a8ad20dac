"""Concurrency fuzz: many tasks, few connections, errors, cancellations and killed backends — no leak."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from pgtenancy import tenant_context
from tests.conftest import TENANTS
from tests.fuzzing import fuzz, take_fuzz_rows

TASKS = 1200
CONCURRENCY = 40
SEED = 20261123


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
    stop, kills = asyncio.Event(), Counter()
    killer = asyncio.create_task(
        _killer(seeded.url("admin", drivername="postgresql+asyncpg"), seeded.roles.app, stop, kills)
    )
    run = await fuzz(engine, TENANTS, tasks=TASKS, seed=SEED, concurrency=CONCURRENCY)
    stop.set()
    await killer
    await engine.dispose()

    assert run.foreign == []
    assert run.outcomes["read"] > TASKS // 4 and run.outcomes["write"] > TASKS // 10
    assert run.outcomes["statement_error"] > 0 and run.outcomes["cancelled"] > 0 and kills["terminated"] > 0
    admin = create_engine(seeded.url("admin"))
    with admin.begin() as conn:
        stored = take_fuzz_rows(conn)
    admin.dispose()
    for tenant, marker in run.committed:
        assert stored.get(marker) == tenant
    print(dict(run.outcomes), dict(kills), f"committed={len(run.committed)}")


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
