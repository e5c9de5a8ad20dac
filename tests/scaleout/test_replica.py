"""A read-only engine routed to a hot standby keeps isolation: the tenant binding is per transaction."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import sessionmaker

from pgtenancy import NoTenantError, instrument, tenant_context, without_tenant
from pgtenancy.testing.database import create_roles, create_template
from tests.conftest import ROWS_PER_TENANT, TENANTS, build_schema
from tests.models import Note

A, B = TENANTS[0], TENANTS[1]


@pytest.fixture(scope="module")
def replica(pgtenancy_replica):
    """The pair with roles and a seeded database on the primary, replayed on the standby."""
    primary = pgtenancy_replica.primary.server()
    roles = create_roles(primary)
    database = "replica_" + secrets.token_hex(3)
    create_template(primary, roles, database, build_schema)
    admin = create_engine(pgtenancy_replica.primary.url(database=database))
    with admin.begin() as conn:
        for tenant, count in ROWS_PER_TENANT.items():
            conn.execute(
                text(
                    "INSERT INTO notes (tenant_id, body) "
                    "SELECT :t, 'note ' || g FROM generate_series(1, :n) g"
                ),
                {"t": tenant, "n": count},
            )
    admin.dispose()
    pgtenancy_replica.wait_for_replay()
    return pgtenancy_replica, roles, database


def _url(node, roles, database, role="app", drivername="postgresql+psycopg"):
    username = roles.app if role == "app" else roles.owner
    return node.url(database=database, username=username, password=roles.password, drivername=drivername)


def test_the_standby_is_in_recovery(replica):
    pair, roles, database = replica
    engine = create_engine(_url(pair.standby, roles, database))
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT pg_is_in_recovery()")) is True
    engine.dispose()


async def test_a_forgotten_filter_on_the_standby_sees_only_the_bound_tenant(replica):
    pair, roles, database = replica
    engine = instrument(
        create_async_engine(_url(pair.standby, roles, database, drivername="postgresql+asyncpg"))
    )
    for tenant in TENANTS:
        async with tenant_context(tenant), engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
        assert len(rows) == ROWS_PER_TENANT[tenant]
        assert set(rows) == {tenant}
    async with without_tenant(), engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM notes")) == 0
    with pytest.raises(NoTenantError):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT count(*) FROM notes"))
    await engine.dispose()


def test_orm_reads_routed_to_the_standby_and_writes_refused_there(replica):
    pair, roles, database = replica
    engine = instrument(create_engine(_url(pair.standby, roles, database)))
    with tenant_context(B), sessionmaker(engine)() as session:
        notes = session.scalars(select(Note)).all()
        assert {note.tenant_id for note in notes} == {B} and len(notes) == ROWS_PER_TENANT[B]
        session.add(Note(body="to the standby"))
        with pytest.raises(DBAPIError, match="read-only transaction"):
            session.flush()
    engine.dispose()


def test_rows_written_on_the_primary_reach_only_their_tenant_on_the_standby(replica):
    pair, roles, database = replica
    primary = instrument(create_engine(_url(pair.primary, roles, database)))
    standby = instrument(create_engine(_url(pair.standby, roles, database)))
    marker = "replicated-" + secrets.token_hex(4)
    with tenant_context(A), primary.begin() as conn:
        conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": marker})
    pair.wait_for_replay()
    seen = {}
    for tenant in (A, B):
        with tenant_context(tenant), standby.connect() as conn:
            seen[tenant] = conn.scalar(text("SELECT count(*) FROM notes WHERE body = :b"), {"b": marker})
    with tenant_context(A), primary.begin() as conn:
        conn.execute(text("DELETE FROM notes WHERE body = :b"), {"b": marker})
    primary.dispose()
    standby.dispose()
    assert seen == {A: 1, B: 0}


async def test_a_sealed_engine_on_the_standby_reads_only_what_its_seal_vouches_for(replica, monkeypatch):
    """The verifier and its keys replay like any table; the seal names the standby's own backend."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import pgtenancy.alembic  # noqa: F401 (registers the operations)
    from pgtenancy.seal import Seal

    pair, roles, database = replica
    key = secrets.token_bytes(32)
    monkeypatch.setenv("PGTENANCY_TEST_SEAL_KEY", key.hex())
    owner = create_engine(_url(pair.primary, roles, database, role="owner"))
    with owner.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE sealed_notes (tenant_id uuid NOT NULL, body text)")
        op = Operations(MigrationContext.configure(conn))
        op.enable_tenant_isolation("sealed_notes")
        op.grant_tenant_access(roles.app, "sealed_notes")
        op.create_tenant_seal()
        op.add_tenant_seal_key("1", key_env="PGTENANCY_TEST_SEAL_KEY")
        op.seal_tenant_isolation("sealed_notes")
    owner.dispose()
    admin = create_engine(pair.primary.url(database=database))
    with admin.begin() as conn:
        conn.exec_driver_sql("INSERT INTO sealed_notes SELECT tenant_id, body FROM notes")
    admin.dispose()
    pair.wait_for_replay()
    engine = create_async_engine(_url(pair.standby, roles, database, drivername="postgresql+asyncpg"))
    instrument(engine, seal=Seal(key, key_id="1"))
    try:
        async with tenant_context(A), engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM sealed_notes"))).scalars().all()
            assert rows == [A] * ROWS_PER_TENANT[A]
            await conn.execute(
                text("SELECT set_config('app.' || 'current_tenant_id', :b, true)"), {"b": str(B)}
            )
            assert (await conn.execute(text("SELECT count(*) FROM sealed_notes"))).scalar() == 0
    finally:
        await engine.dispose()
