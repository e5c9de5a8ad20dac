"""S1: what sealing costs, a sealed policy and its signing engine against the plain policy and engine.

The same 100,000 rows over 100 tenants in two tables, one under pgtenancy's plain policy and one sealed by
the migration operations; the baseline engine applies the tenant, the candidate signs it too. Also the
verifier's own server time per call, which every statement on a sealed table pays once (an InitPlan).
"""

from __future__ import annotations

import os
import random
import secrets
import time
from typing import Any

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import pgtenancy.alembic  # noqa: F401 (registers the operations)
from benchmarks.harness import Comparison, compare, query_work
from pgtenancy import instrument, tenant_context
from pgtenancy.seal import Seal
from pgtenancy.testing.database import TestDatabase, TestRoles

TENANTS = 100
ROWS = 100_000
KEY = secrets.token_bytes(32)
_KEY_ENV = "PGTENANCY_BENCHMARK_SEAL_KEY"
QUERIES = {
    "point select": "SELECT * FROM {t} WHERE id = :id",
    "count": "SELECT count(*) FROM {t}",
}


def schema(conn: Connection, roles: TestRoles) -> None:
    """``plain`` and ``sealed``: the same rows, isolated by the operations, one of them sealed."""
    app = conn.dialect.identifier_preparer.quote(roles.app)
    op = Operations(MigrationContext.configure(conn))
    os.environ[_KEY_ENV] = KEY.hex()
    try:
        op.create_tenant_seal()
        op.add_tenant_seal_key("1", key_env=_KEY_ENV)
    finally:
        del os.environ[_KEY_ENV]
    for table in ("plain", "sealed"):
        conn.exec_driver_sql(
            "CREATE TABLE " + table + " (tenant_id bigint NOT NULL, id bigint NOT NULL, amount int, "
            "PRIMARY KEY (tenant_id, id))"
        )
        conn.execute(
            text(
                " ".join(
                    (
                        "INSERT INTO",
                        table,
                        "SELECT g % :tenants + 1, g, g % 1000 FROM generate_series(1, :rows) g",
                    )
                )
            ),
            {"tenants": TENANTS, "rows": ROWS},
        )
        op.enable_tenant_isolation(table, key_type="int")
        conn.exec_driver_sql("GRANT SELECT ON " + table + " TO " + app)
        conn.exec_driver_sql("ANALYZE " + table)
    op.seal_tenant_isolation("sealed", key_type="int")


def _row(rng: random.Random) -> dict[str, int]:
    row = rng.randrange(1, ROWS + 1)
    return {"t": row % TENANTS + 1, "id": row}


async def run(database: TestDatabase, *, rounds: int, seconds: float) -> list[Comparison]:
    """S1 per query: sealed policy and signing engine / plain policy and engine."""
    vacuum = create_engine(database.url("admin"), isolation_level="AUTOCOMMIT")
    with vacuum.connect() as conn:  # both all-visible: the same (index-only) plans, whatever autovacuum did
        for table in ("plain", "sealed"):
            conn.exec_driver_sql("VACUUM (FREEZE, ANALYZE) " + table)
    vacuum.dispose()
    url = database.url("app", drivername="postgresql+asyncpg")
    options: dict[str, Any] = {"pool_size": 4, "max_overflow": 0}
    plain = instrument(create_async_engine(url, **options), key_type="int")
    sealed = instrument(create_async_engine(url, **options), key_type="int", seal=Seal(KEY))
    results = []
    try:
        gauge = text(QUERIES["point select"].format(t="plain"))
        results.append(
            await compare(
                "S1 noise gauge: plain / plain",
                query_work(plain, gauge, True, _row),
                query_work(plain, gauge, True, _row),
                rounds=rounds,
                tasks=4,
                seconds=seconds,
            )
        )
        for name, sql in QUERIES.items():
            results.append(
                await compare(
                    f"S1 {name}: sealed / plain policy",
                    query_work(plain, text(sql.format(t="plain")), True, _row),
                    query_work(sealed, text(sql.format(t="sealed")), True, _row),
                    rounds=rounds,
                    tasks=4,
                    seconds=seconds,
                )
            )
    finally:
        await plain.dispose()
        await sealed.dispose()
    print(f"verifier: {verifier_microseconds(database):.2f} us of server time per call")
    return results


def verifier_microseconds(database: TestDatabase, calls: int = 20_000) -> float:
    """The verifier's server time per call (a sealed transaction's, minus reading the setting alone)."""
    engine = instrument(
        create_engine(database.url("app"), poolclass=NullPool), key_type="int", seal=Seal(KEY)
    )
    timings = []
    try:
        with tenant_context(1), engine.connect() as conn:
            for expression in ("pgtenancy_seal.current_tenant()", "current_setting('app.current_tenant_id')"):
                query = text(" ".join(("SELECT count(", expression, ") FROM generate_series(1, :n)")))
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    conn.execute(query, {"n": calls})
                    best = min(best, time.perf_counter() - start)
                timings.append(best)
    finally:
        engine.dispose()
    return (timings[0] - timings[1]) / calls * 1e6
