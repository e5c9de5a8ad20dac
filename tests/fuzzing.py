"""The concurrency fuzz shared by the single-server and the Citus suites."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pgtenancy import TenancyError, tenant_context

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
READ = text("SELECT DISTINCT tenant_id FROM notes")  # no tenant filter: every id RLS lets through
FAIL = text("SELECT 1 / (count(*) - count(*)) FROM notes")  # a division by zero, on every node
SLOW = text("SELECT pg_sleep(0.05), count(*) FROM notes")
WRITE = text("INSERT INTO notes (body) VALUES (:b)")


@dataclass
class FuzzRun:
    """What a fuzz run saw: counts per outcome, rows of other tenants, and the writes that committed."""

    outcomes: Counter[str] = field(default_factory=Counter)
    foreign: list[tuple[object, object]] = field(default_factory=list)
    committed: list[tuple[object, str]] = field(default_factory=list)


async def fuzz(engine, tenants: list[object], *, tasks: int, seed: int, concurrency: int) -> FuzzRun:
    """``tasks`` tasks, each bound to a tenant: reads, writes, failing statements and cancellations.

    TenancyError propagates (pgtenancy must never refuse a well-bound task); connection failures
    caused by the test's own killing and cancelling are counted.
    """
    run, rng, limit = FuzzRun(), random.Random(seed), asyncio.Semaphore(concurrency)

    async def read(tenant):
        async with engine.connect() as conn:
            rows = (await conn.execute(READ)).scalars().all()
        run.foreign.extend((tenant, row) for row in rows if row != tenant)
        run.outcomes["read"] += 1

    async def write(tenant):
        marker = f"fuzz-{uuid.uuid4()}"
        async with engine.begin() as conn:
            await conn.execute(WRITE, {"b": marker})
        run.committed.append((tenant, marker))
        run.outcomes["write"] += 1

    async def fail(tenant):
        async with engine.connect() as conn:
            try:
                await conn.execute(FAIL)
            except DBAPIError:
                run.outcomes["statement_error"] += 1
            await conn.rollback()
            rows = (await conn.execute(READ)).scalars().all()
        run.foreign.extend((tenant, row) for row in rows if row != tenant)

    async def cancelled(tenant):
        async def slow():
            async with engine.connect() as conn:
                await conn.execute(SLOW)

        task = asyncio.create_task(slow())
        await asyncio.sleep(rng.uniform(0.001, 0.02))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            run.outcomes["cancelled"] += 1

    operations = [read, read, read, write, fail, cancelled]

    async def one(n):
        tenant = tenants[n % len(tenants)]
        operation = rng.choice(operations)
        async with limit, tenant_context(tenant):
            try:
                await operation(tenant)
            except TenancyError:
                raise
            except EXPECTED_FAILURES:
                run.outcomes["connection_error"] += 1

    await asyncio.gather(*(one(n) for n in range(tasks)))
    return run


def take_fuzz_rows(conn: Connection) -> dict[str, object]:
    """The fuzz's committed rows as the superuser sees them (marker -> tenant), deleted afterwards."""
    stored = dict(
        conn.execute(text("SELECT body, tenant_id FROM notes WHERE starts_with(body, 'fuzz-')")).all()
    )
    conn.execute(text("DELETE FROM notes WHERE starts_with(body, 'fuzz-')"))
    return stored
