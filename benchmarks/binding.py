"""P1: pooled concurrent point selects, instrumented engine vs the same stack without tenancy."""

from __future__ import annotations

import random

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.harness import Comparison, compare, query_work
from pgtenancy import instrument
from pgtenancy.testing.database import TestDatabase, TestRoles

TENANTS = 1000
ROWS_PER_TENANT = 10
POINT_SELECT = text("SELECT id, body FROM items WHERE tenant_id = :t AND id = :id")


def schema(conn: Connection, roles: TestRoles) -> None:
    """One plain table (no RLS: this measures the binding alone) of TENANTS x ROWS_PER_TENANT rows."""
    conn.exec_driver_sql(
        "CREATE TABLE items (tenant_id bigint NOT NULL, id bigint NOT NULL, body text NOT NULL, "
        "PRIMARY KEY (tenant_id, id))"
    )
    conn.execute(
        text(
            "INSERT INTO items SELECT t, t * 100 + r, md5((t * 100 + r)::text) "
            "FROM generate_series(1, :tenants) t, generate_series(1, :rows) r"
        ),
        {"tenants": TENANTS, "rows": ROWS_PER_TENANT},
    )
    conn.exec_driver_sql("GRANT SELECT ON items TO " + conn.dialect.identifier_preparer.quote(roles.app))
    conn.exec_driver_sql("ANALYZE items")


def _engine(database: TestDatabase, driver: str, mode: str | None) -> AsyncEngine:
    """An app-role engine on a pool of 8, instrumented with ``mode`` unless it is ``None``."""
    engine = create_async_engine(database.url("app", drivername=driver), pool_size=8, max_overflow=0)
    return engine if mode is None else instrument(engine, key_type="int", mode=mode)


def _row(rng: random.Random) -> dict[str, int]:
    tenant = rng.randrange(1, TENANTS + 1)
    return {"t": tenant, "id": tenant * 100 + rng.randrange(1, ROWS_PER_TENANT + 1)}


async def run(database: TestDatabase, *, rounds: int, seconds: float) -> list[Comparison]:
    """P1 per driver: the default ``instrument()`` and the separate-statement mode vs no tenancy.

    Each driver first compares the baseline with a second baseline engine: the spread of that
    ratio around 1.0 is the resolution of the run.
    """
    results = []
    for label, driver in (("asyncpg", "postgresql+asyncpg"), ("psycopg", "postgresql+psycopg")):
        for mode in (None, "begin", "set_config"):
            plain, tenant = _engine(database, driver, None), _engine(database, driver, mode)
            name = f"mode={mode}: instrumented / no tenancy" if mode else "no tenancy / no tenancy (noise)"
            try:
                results.append(
                    await compare(
                        f"P1 point select, {label}, {name}",
                        query_work(plain, POINT_SELECT, False, _row),
                        query_work(tenant, POINT_SELECT, mode is not None, _row),
                        rounds=rounds,
                        tasks=32,
                        seconds=seconds,
                    )
                )
            finally:
                await plain.dispose()
                await tenant.dispose()
    return results
