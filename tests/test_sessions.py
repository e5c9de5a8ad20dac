"""An ORM session never returns objects loaded for one tenant to another, even with expire_on_commit=False."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pgtenancy import tenant_context, without_tenant
from tests.conftest import TENANTS
from tests.models import Note

A, B = TENANTS[0], TENANTS[1]


async def first_note_of(engine, tenant):
    async with tenant_context(tenant), engine.connect() as conn:
        return (await conn.execute(text("SELECT min(id) FROM notes"))).scalar_one()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_a_reused_session_does_not_serve_the_previous_tenants_objects(
    seeded, pgtenancy_engine_factory, driver
):
    engine = pgtenancy_engine_factory(driver)
    a_note = await first_note_of(engine, A)
    session = async_sessionmaker(engine, expire_on_commit=False)()  # a module-level session, say
    async with tenant_context(A):
        loaded = await session.get(Note, a_note)
        await session.commit()
        assert loaded.tenant_id == A
        assert await session.get(Note, a_note) is loaded  # the same tenant keeps its identity map
    async with tenant_context(B):
        assert await session.get(Note, a_note) is None  # no SQL-free answer from A's objects
        rows = (await session.scalars(select(Note).where(Note.id == a_note))).all()
        assert rows == []
        await session.commit()
    async with without_tenant():
        assert await session.get(Note, a_note) is None
        await session.commit()
    async with tenant_context(A):  # back to A: loaded again, under A's row-level security
        again = await session.get(Note, a_note)
        assert again is not None and again.tenant_id == A
    await session.close()
    await engine.dispose()


async def test_pending_objects_of_the_new_tenant_are_kept(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    a_note = await first_note_of(engine, A)
    session = async_sessionmaker(engine, expire_on_commit=False)()
    async with tenant_context(A):
        kept = await session.get(Note, a_note)  # held: the identity map only keeps referenced objects
        await session.commit()
    async with tenant_context(B):
        added = Note(body="added by B")
        session.add(added)  # pending, then a read under B drops A's objects but not this one
        assert await session.get(Note, a_note) is None
        await session.commit()
        assert added.tenant_id == B
        await session.delete(added)
        await session.commit()
    assert kept.tenant_id == A  # A's object itself is left as it was, only no longer in the session
    await session.close()
    await engine.dispose()


def test_sync_session_too(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg")
    with tenant_context(A), engine.connect() as conn:
        a_note = conn.execute(text("SELECT min(id) FROM notes")).scalar_one()
    with sessionmaker(engine, expire_on_commit=False)() as session:
        with tenant_context(A):
            kept = session.get(Note, a_note)  # held: the identity map only keeps referenced objects
            assert kept.tenant_id == A
            session.commit()
        with tenant_context(B):
            assert session.get(Note, a_note) is None
