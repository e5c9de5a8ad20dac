"""``python -m benchmarks.citus [--quick]``: shard pruning on a local Citus cluster.

One-tenant ORM point selects and counts on a table hash-distributed by its tenant column, under RLS:
RLS alone (every shard is asked), ``enable_tenant_criteria`` (the ORM adds ``tenant_id = :bound``),
and a hand-written explicit tenant filter. Interleaved rounds in one process; prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import BigInteger, Text, create_engine, func, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks.harness import Comparison, compare
from pgtenancy import TenantMixin, instrument, tenant_context
from pgtenancy.citus import create_distributed_table
from pgtenancy.pruning import enable_tenant_criteria
from pgtenancy.testing.cluster import CitusCluster, start_citus_cluster
from pgtenancy.testing.database import TestRoles, create_roles

TENANTS = [uuid.UUID(int=0xB000 + n) for n in range(100)]
ROWS_PER_TENANT = 100
_quote = postgresql.dialect().identifier_preparer.quote
POLICY = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"


class Base(DeclarativeBase):
    pass


class Item(TenantMixin, Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    body: Mapped[str] = mapped_column(Text)


def _build(cluster: CitusCluster, roles: TestRoles) -> None:
    """``items``: distributed by ``tenant_id``, RLS forced with the unwrapped policy, seeded, analysed."""
    owner_role, app_role = _quote(roles.owner), _quote(roles.app)
    admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE SCHEMA bench AUTHORIZATION " + owner_role)
        conn.exec_driver_sql("GRANT USAGE ON SCHEMA bench TO " + app_role)
        conn.exec_driver_sql("ALTER DATABASE " + _quote(cluster.database) + " SET search_path = bench")
    owner = create_engine(cluster.url(username=roles.owner, password=roles.password))
    with owner.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (tenant_id uuid NOT NULL, id bigint NOT NULL, body text NOT NULL, "
            "PRIMARY KEY (tenant_id, id))"
        )
        create_distributed_table(conn, "items", "tenant_id")
        conn.execute(
            text(
                "INSERT INTO items SELECT t, n * 1000 + r, md5(r::text) "
                "FROM unnest(CAST(:tenants AS uuid[])) WITH ORDINALITY AS x(t, n), "
                "generate_series(1, :rows) r"
            ),
            {"tenants": TENANTS, "rows": ROWS_PER_TENANT},
        )
        conn.exec_driver_sql("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
        conn.exec_driver_sql("ALTER TABLE items FORCE ROW LEVEL SECURITY")
        conn.exec_driver_sql(
            f"CREATE POLICY tenant_isolation ON items USING ({POLICY}) WITH CHECK ({POLICY})"
        )
        conn.exec_driver_sql("GRANT SELECT ON items TO " + app_role)
    with admin.connect() as conn:
        conn.exec_driver_sql("ANALYZE bench.items")
    owner.dispose()
    admin.dispose()


def _pick(rng: random.Random) -> tuple[uuid.UUID, int]:
    """A random tenant and the id of one of its rows."""
    n = rng.randrange(len(TENANTS))
    return TENANTS[n], (n + 1) * 1000 + rng.randrange(1, ROWS_PER_TENANT + 1)


def _work(
    factory: async_sessionmaker[Any], statement: Callable[[uuid.UUID, int], Any]
) -> Callable[[int], Awaitable[None]]:
    """One ORM query per call, for a random tenant bound with ``tenant_context``."""
    rng = random.Random(11)

    async def work(i: int) -> None:
        tenant, item = _pick(rng)
        async with tenant_context(tenant), factory() as session:
            (await session.execute(statement(tenant, item))).all()

    return work


POINT = {
    "RLS only": lambda t, i: select(Item).where(Item.id == i),
    "explicit filter": lambda t, i: select(Item).where(Item.tenant_id == t, Item.id == i),
}
COUNT = {
    "RLS only": lambda t, i: select(func.count()).select_from(Item),
    "explicit filter": lambda t, i: select(func.count()).select_from(Item).where(Item.tenant_id == t),
}


async def run(engine: AsyncEngine, *, rounds: int, seconds: float, tasks: int) -> list[Comparison]:
    """Per query shape: criteria vs RLS only, and criteria vs the explicit filter (target: >= 1/1.2)."""
    plain = async_sessionmaker(engine)
    pruned = enable_tenant_criteria(async_sessionmaker(engine))
    results = []
    for shape, statements in (("point select", POINT), ("count", COUNT)):
        criteria = _work(pruned, statements["RLS only"])
        for baseline in ("RLS only", "explicit filter"):
            results.append(
                await compare(
                    f"{shape}: enable_tenant_criteria / {baseline}",
                    _work(plain, statements[baseline]),
                    criteria,
                    rounds=rounds,
                    tasks=tasks,
                    seconds=seconds,
                )
            )
    return results


async def _main(rounds: int, seconds: float, tasks: int) -> list[dict[str, object]]:
    cluster = start_citus_cluster()
    try:
        roles = create_roles(cluster.server, prefix="pgtb")
        _build(cluster, roles)
        url = cluster.url(username=roles.app, password=roles.password, drivername="postgresql+asyncpg")
        engine = instrument(create_async_engine(url, pool_size=4, max_overflow=0), mode="set_local")
        try:
            return [result.row() for result in await run(engine, rounds=rounds, seconds=seconds, tasks=tasks)]
        finally:
            await engine.dispose()
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.citus", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a smoke run)")
    parser.add_argument("--tasks", type=int, default=1, help="concurrent tasks (pool of 4; default 1)")
    args = parser.parse_args(argv)
    rounds, seconds = (2, 0.5) if args.quick else (6, 2.0)
    rows = asyncio.run(_main(rounds, seconds, args.tasks))
    width = max(len(str(row["name"])) for row in rows)
    print(f"{'benchmark':<{width}}  ratio   baseline  candidate  unit  ({args.tasks} task(s))")
    for row in rows:
        figures = f"{row['ratio']:<6}  {row['baseline']:>8}  {row['candidate']:>9}  {row['unit']}"
        print(f"{row['name']:<{width}}  {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
