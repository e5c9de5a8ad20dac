"""P1: pooled concurrent point selects, instrumented engine vs the same stack without tenancy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.harness import Comparison, compare
from pgtenancy import instrument, tenant_context
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


def _engine(database: TestDatabase, driver: str, **instrument_options: Any) -> AsyncEngine:
    engine = create_async_engine(database.url("app", drivername=driver), pool_size=8, max_overflow=0)
    if instrument_options:
        instrument(engine, key_type="int", **instrument_options)
    return engine


def _point_select(engine: AsyncEngine, bind: bool):
    async def work(i: int) -> None:
        tenant = i % TENANTS + 1
        params = {"t": tenant, "id": tenant * 100 + i % ROWS_PER_TENANT + 1}
        if bind:
            async with tenant_context(tenant), engine.connect() as conn:
                (await conn.execute(POINT_SELECT, params)).one()
        else:
            async with engine.connect() as conn:
                (await conn.execute(POINT_SELECT, params)).one()

    return work


async def run(database: TestDatabase, *, rounds: int, seconds: float) -> list[Comparison]:
    """P1 for each driver: ``instrument()`` defaults vs the same engine with no tenancy at all."""
    results = []
    for label, driver in (("asyncpg", "postgresql+asyncpg"), ("psycopg", "postgresql+psycopg")):
        plain = _engine(database, driver)
        tenant = _engine(database, driver)
        try:
            results.append(
                await compare(
                    f"P1 point select, {label}: instrumented / no tenancy",
                    _point_select(plain, bind=False),
                    _point_select(tenant, bind=True),
                    rounds=rounds,
                    tasks=32,
                    seconds=seconds,
                )
            )
        finally:
            await plain.dispose()
            await tenant.dispose()
    return results
