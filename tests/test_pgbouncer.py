"""Isolation through PgBouncer in transaction mode, and why session-level settings leak there.

Transaction pooling hands one server connection to many clients, one transaction at a time: a
setting made with ``set_config(..., false)`` outlives its transaction and reaches the next client.
pgtenancy's transaction-local ``set_config(..., true)`` dies with its transaction.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from pgtenancy import instrument, tenant_context
from pgtenancy.testing import TestDatabase
from tests.bouncer import SHARED, Bouncer, driver_options, start_bouncer
from tests.conftest import ROWS_PER_TENANT, TENANTS

SETTING = "app.current_tenant_id"


@pytest.fixture(scope="module")
def pgbouncer(seeded: TestDatabase) -> Iterator[Bouncer]:
    if shutil.which("pgbouncer") is None:
        pytest.skip("the pgbouncer binary is not installed (apt-get install -y pgbouncer; CI installs it)")
    with start_bouncer(seeded) as process:
        yield process.bouncer


def test_the_app_role_cannot_bypass_rls(pgbouncer: Bouncer) -> None:
    with pgbouncer.connect() as conn:
        superuser, bypass = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert (superuser, bypass) == (False, False)  # or every leakage test below would pass falsely


def test_session_level_set_config_leaks_to_the_next_client(pgbouncer: Bouncer) -> None:
    """The pattern many guides show: SET / set_config(..., false) once per connection."""
    victim, stranger = TENANTS[0], TENANTS[1]
    with pgbouncer.connect() as first:
        first.execute("SELECT set_config(%s, %s, false)", (SETTING, str(victim)))
    with pgbouncer.connect() as second:  # another client, which never set a tenant
        leaked = [row[0] for row in second.execute("SELECT tenant_id FROM notes")]
        second.execute("SELECT set_config(%s, %s, false)", (SETTING, ""))  # clean up the shared connection
    assert leaked and set(leaked) == {victim}, "the second client read the first client's tenant"
    assert len(leaked) == ROWS_PER_TENANT[victim]
    assert stranger not in leaked


def test_transaction_local_set_config_does_not_leak(pgbouncer: Bouncer) -> None:
    victim = TENANTS[0]
    with pgbouncer.connect() as first, first.transaction():
        first.execute("SELECT set_config(%s, %s, true)", (SETTING, str(victim)))
        assert first.execute("SELECT count(*) FROM notes").fetchone()[0] == ROWS_PER_TENANT[victim]
    with pgbouncer.connect() as second:
        assert second.execute("SELECT current_setting(%s, true)", (SETTING,)).fetchone()[0] in (None, "")
        assert second.execute("SELECT count(*) FROM notes").fetchone()[0] == 0


async def test_instrumented_engine_wins_over_a_polluted_server_connection(pgbouncer: Bouncer) -> None:
    """Even when a careless client left a session-level tenant behind, each transaction sets its own."""
    with pgbouncer.connect() as careless:
        careless.execute("SELECT set_config(%s, %s, false)", (SETTING, str(TENANTS[0])))
    engine = _engine(pgbouncer, database=SHARED, pool_size=2)
    try:
        for tenant in TENANTS[1:]:
            async with tenant_context(tenant), engine.connect() as conn:
                rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
            assert rows and set(rows) == {tenant}
    finally:
        await engine.dispose()
        with pgbouncer.connect() as conn:
            conn.execute("SELECT set_config(%s, %s, false)", (SETTING, ""))


def _engine(bouncer: Bouncer, *, database: str | None = None, pool_size: int = 8):
    """asyncpg through PgBouncer 1.18 (no prepared statements in transaction mode): see driver_options."""
    query, connect_args = driver_options("postgresql+asyncpg")
    url = bouncer.url(drivername="postgresql+asyncpg", database=database, **query)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, connect_args=connect_args)
    return instrument(engine)


@pytest.mark.slow
async def test_concurrency_fuzz_through_pgbouncer_never_crosses_tenants(pgbouncer: Bouncer) -> None:
    """Many tasks on 8 client connections share 3 server connections: zero foreign rows."""
    engine = _engine(pgbouncer)
    rng = random.Random(20261123)
    foreign: list[tuple[uuid.UUID, uuid.UUID]] = []
    outcomes: Counter[str] = Counter()
    committed: list[tuple[uuid.UUID, str]] = []
    limit = asyncio.Semaphore(32)

    async def read(tenant: uuid.UUID) -> None:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
        foreign.extend((tenant, row) for row in rows if row != tenant)
        outcomes["read"] += 1

    async def write(tenant: uuid.UUID) -> None:
        marker = f"bouncer-{uuid.uuid4()}"
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": marker})
        committed.append((tenant, marker))
        outcomes["write"] += 1

    async def fail(tenant: uuid.UUID) -> None:
        async with engine.connect() as conn:
            with pytest.raises(Exception, match="division by zero"):
                await conn.execute(text("SELECT 1/0 FROM notes"))
            await conn.rollback()
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
        foreign.extend((tenant, row) for row in rows if row != tenant)
        outcomes["error"] += 1

    operations = [read, read, read, write, fail]

    async def one(n: int) -> None:
        tenant = TENANTS[n % len(TENANTS)]
        async with limit, tenant_context(tenant):
            await rng.choice(operations)(tenant)

    with pgbouncer.connect(pgbouncer.database.name) as careless:  # a polluted server connection: no matter
        careless.execute("SELECT set_config(%s, %s, false)", (SETTING, str(TENANTS[0])))
    try:
        await asyncio.gather(*(one(n) for n in range(600)))
    finally:
        await engine.dispose()

    assert foreign == []
    assert outcomes["read"] > 100 and outcomes["write"] > 50 and outcomes["error"] > 20
    admin = psycopg.connect(
        pgbouncer.database.url("admin", drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    )
    with admin:
        stored = dict(
            admin.execute("SELECT body, tenant_id FROM notes WHERE body LIKE 'bouncer-%'").fetchall()
        )
        admin.execute("DELETE FROM notes WHERE body LIKE 'bouncer-%'")
    assert {marker: tenant for tenant, marker in committed} == stored
