"""A query that forgets its tenant filter still sees only the bound tenant's rows, on every driver."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pgtenancy import engine as engine_module
from pgtenancy import instrument, is_instrumented, tenant_context, uninstrument, without_tenant
from pgtenancy.engine import FallbackWarning, instrumentation_path
from pgtenancy.errors import ConfigurationError, NoTenantError, TenantSwitchError
from tests.conftest import INT_TENANTS, ROWS_PER_TENANT, TENANTS
from tests.models import Note

ASYNC_DRIVERS = ["asyncpg", "psycopg_async"]
A, B = TENANTS[0], TENANTS[1]


def test_runs_as_a_role_rls_binds(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg")
    with without_tenant(), engine.connect() as conn:
        superuser, bypass = conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        ).one()
    assert (superuser, bypass) == (False, False)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_core_async_forgotten_filter(seeded, pgtenancy_engine_factory, driver):
    engine = pgtenancy_engine_factory(driver)
    for tenant in TENANTS:
        async with tenant_context(tenant), engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
        assert len(rows) == ROWS_PER_TENANT[tenant]
        assert set(rows) == {tenant}
    await engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_orm_async_forgotten_filter(seeded, pgtenancy_engine_factory, driver):
    engine = pgtenancy_engine_factory(driver)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    for tenant in TENANTS:
        async with tenant_context(tenant), factory() as session:
            notes = (await session.scalars(select(Note))).all()
            count = await session.scalar(select(func.count()).select_from(Note))
        assert {note.tenant_id for note in notes} == {tenant}
        assert count == len(notes) == ROWS_PER_TENANT[tenant]
    await engine.dispose()


def test_sync_core_and_orm_forgotten_filter(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg")
    factory = sessionmaker(engine)
    for tenant in TENANTS:
        with tenant_context(tenant):
            with engine.connect() as conn:
                core = conn.execute(text("SELECT tenant_id FROM notes")).scalars().all()
            with factory() as session:
                orm = session.scalars(select(Note.tenant_id)).all()
        assert set(core) == set(orm) == {tenant}
        assert len(core) == len(orm) == ROWS_PER_TENANT[tenant]


async def test_instrumenting_the_session_factory(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", instrumented=False)
    factory = instrument(async_sessionmaker(engine))
    assert is_instrumented(engine)
    async with tenant_context(B), factory() as session:
        assert set((await session.scalars(select(Note.tenant_id))).all()) == {B}
    uninstrument(factory)
    assert not is_instrumented(engine)
    async with factory() as session:  # no tenant applied: RLS shows nothing
        assert (await session.scalars(select(Note))).all() == []
    await engine.dispose()


async def test_uninstrument_gives_the_dialect_back_and_a_replaced_dialect_is_refused(
    seeded, pgtenancy_engine_factory
):
    engine = pgtenancy_engine_factory("asyncpg", instrumented=False)
    dialect = engine.sync_engine.dialect
    replaceable = {"connect", "do_execute", "do_execute_no_params", "do_executemany"}
    instrument(engine)
    assert replaceable <= set(vars(dialect))
    copy = engine.execution_options(isolation_level="REPEATABLE READ")  # shares the pool and dialect
    assert is_instrumented(copy) and instrument(copy) is copy
    async with copy.connect() as conn:
        with pytest.raises(NoTenantError):
            await conn.execute(text("SELECT 1"))
    uninstrument(copy)
    assert not is_instrumented(engine)
    assert not replaceable & set(vars(dialect))
    async with engine.connect() as conn:  # unchecked again: no NoTenantError, and RLS shows nothing
        assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
    dialect.do_execute = lambda cursor, statement, parameters, context=None: None  # another library's
    with pytest.raises(ConfigurationError, match="replaced"):
        instrument(engine)
    assert not is_instrumented(engine)
    await engine.dispose()


async def test_nested_contexts_switch_between_transactions(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    seen = []
    async with tenant_context(A):
        async with engine.connect() as conn:
            seen.append(set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars()))
        async with tenant_context(B), engine.connect() as conn:
            seen.append(set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars()))
        async with engine.connect() as conn:
            seen.append(set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars()))
    assert seen == [{A}, {B}, {A}]
    await engine.dispose()


async def test_tasks_created_inside_a_context_inherit_it(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")

    async def count_visible():
        async with engine.connect() as conn:
            return set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars())

    async with tenant_context(A):
        first = asyncio.create_task(count_visible())
    async with tenant_context(B):
        second = asyncio.create_task(count_visible())
    assert await first == {A}
    assert await second == {B}
    await engine.dispose()


async def test_without_tenant_sees_nothing_and_cannot_write(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    async with without_tenant():
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
            updated = await conn.execute(text("UPDATE notes SET body = 'x'"))
            assert updated.rowcount == 0
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match=r"row-level security|null value"):
                await conn.execute(text("INSERT INTO notes (body) VALUES ('orphan')"))
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="row-level security"):
                await conn.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'x')"), {"t": A})
    await engine.dispose()


async def test_inserts_take_the_bound_tenant_from_the_column_default(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with tenant_context(B), factory() as session:
        note = Note(body="defaulted")
        session.add(note)
        await session.commit()
    assert note.tenant_id == B
    async with tenant_context(A), engine.connect() as conn:
        bodies = (await conn.execute(text("SELECT body FROM notes"))).scalars().all()
    assert "defaulted" not in bodies
    async with tenant_context(B), engine.begin() as conn:
        bodies = (await conn.execute(text("SELECT body FROM notes"))).scalars().all()
        assert "defaulted" in bodies
        await conn.execute(text("DELETE FROM notes WHERE body = 'defaulted'"))
    await engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_cross_tenant_writes_are_rejected(seeded, pgtenancy_engine_factory, driver):
    engine = pgtenancy_engine_factory(driver)
    async with tenant_context(A):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="row-level security"):
                await conn.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'x')"), {"t": B})
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="row-level security"):
                await conn.execute(update(Note.__table__).values(tenant_id=B))
        async with engine.begin() as conn:  # B's rows are invisible, so they cannot be touched
            hit = await conn.execute(
                update(Note.__table__).where(Note.tenant_id == B).values(body="hijacked")
            )
            assert hit.rowcount == 0
            gone = await conn.execute(text("DELETE FROM notes WHERE tenant_id = :t"), {"t": B})
            assert gone.rowcount == 0
    async with tenant_context(B), engine.connect() as conn:
        bodies = (await conn.execute(text("SELECT body FROM notes"))).scalars().all()
    assert len(bodies) == ROWS_PER_TENANT[B] and "hijacked" not in bodies
    await engine.dispose()


async def test_integer_tenant_ids(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", key_type="int")
    for tenant in INT_TENANTS:
        async with tenant_context(tenant), engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM int_notes"))).scalars().all()
        assert rows == [tenant]
    await engine.dispose()


async def test_set_local_mode_isolates_too(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", mode="set_local")
    async with tenant_context(str(A)), engine.connect() as conn:
        rows = set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars())
    assert rows == {A}
    await engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_a_driver_without_its_adapter_falls_back_to_engine_events_loudly(
    seeded, pgtenancy_engine_factory, driver, monkeypatch
):
    """Another SQLAlchemy or driver without what the adapter relies on still isolates, and says so."""
    monkeypatch.setattr(engine_module, "adapter_for", lambda dialect: (None, "no adapter in this test"))
    with pytest.warns(FallbackWarning, match="no adapter in this test"):
        engine = pgtenancy_engine_factory(driver)
    assert instrumentation_path(engine) == "events"
    assert not set(vars(engine.sync_engine.dialect)) & {"connect", "do_execute"}  # no dialect methods
    sent = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda c, cur, s, *a: sent.append(s))
    for tenant in (A, B):
        async with tenant_context(tenant), engine.connect() as conn:
            assert set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars()) == {tenant}
    assert sum("set_config" in statement for statement in sent) == 2  # a separate statement per transaction
    async with tenant_context(A), engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        with tenant_context(B), pytest.raises(TenantSwitchError):
            await conn.execute(text("SELECT 1"))
    await engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg", "psycopg_async"])
def test_every_supported_driver_takes_the_driver_path(pgtenancy_engine_factory, driver):
    """A renamed private name in SQLAlchemy or a driver fails here, not silently in throughput."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        engine = pgtenancy_engine_factory(driver)
    assert instrumentation_path(engine) == "driver"


async def test_unknown_tenant_sees_nothing(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    async with tenant_context(uuid.uuid4()), engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
    await engine.dispose()


async def test_begin_mode_keeps_a_users_own_asyncpg_connection_class(seeded, pgtenancy_engine_factory):
    import asyncpg

    class AppConnection(asyncpg.Connection):
        pass

    engine = pgtenancy_engine_factory(
        "asyncpg", engine_options={"connect_args": {"connection_class": AppConnection}}
    )
    async with tenant_context(B), engine.connect() as conn:
        rows = set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars())
        raw = (await conn.get_raw_connection()).driver_connection
    assert rows == {B}
    assert isinstance(raw, AppConnection)
    await engine.dispose()


async def test_connections_made_before_instrument_still_get_the_tenant(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", instrumented=False, engine_options={"pool_size": 1})
    async with engine.connect() as conn:  # a pooled connection made by the plain driver class
        await conn.execute(text("SELECT 1"))
    instrument(engine)
    async with tenant_context(A), engine.connect() as conn:
        rows = set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars())
    assert rows == {A}
    await engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_bulk_inserts_savepoints_and_plain_sql_carry_the_tenant(
    seeded, pgtenancy_engine_factory, driver
):
    engine = pgtenancy_engine_factory(driver)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with tenant_context(B), factory() as session:
        session.add_all([Note(body=f"bulk {n}") for n in range(60)])  # one multi-row INSERT ... RETURNING
        await session.flush()
        async with session.begin_nested():
            session.add(Note(body="bulk in savepoint"))
        await session.commit()
    async with tenant_context(B), engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE notes SET body = body || '!' WHERE starts_with(body, 'bulk')")
        rows = (
            await conn.exec_driver_sql("SELECT tenant_id, body FROM notes WHERE starts_with(body, 'bulk')")
        ).all()
        await conn.exec_driver_sql("DELETE FROM notes WHERE starts_with(body, 'bulk')")
    assert len(rows) == 61 and {row.tenant_id for row in rows} == {B}
    assert all(row.body.endswith("!") for row in rows)
    await engine.dispose()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_sql_run_by_a_users_begin_listener_does_not_lose_the_tenant(
    seeded, pgtenancy_engine_factory, driver
):
    """A begin listener's own statement opens the transaction, and already carries the tenant."""
    engine = pgtenancy_engine_factory(driver)
    seen = []

    def on_begin(conn):
        conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
        seen.append(conn.exec_driver_sql("SELECT current_setting('app.current_tenant_id')").scalar_one())

    event.listen(engine.sync_engine, "begin", on_begin)
    for tenant in (A, B, A):
        async with tenant_context(tenant), engine.connect() as conn:
            rows = set((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars())
            timeout = (await conn.execute(text("SHOW lock_timeout"))).scalar_one()
        assert rows == {tenant} and timeout == "5s" and seen[-1] == str(tenant)
    await engine.dispose()


def test_a_transaction_opened_behind_sqlalchemys_back_still_gets_the_tenant(seeded, pgtenancy_engine_factory):
    """A pool checkout hook that runs raw SQL leaves the driver in a transaction pgtenancy did not open."""
    engine = pgtenancy_engine_factory("psycopg", engine_options={"pool_size": 1})

    def on_checkout(dbapi_connection, record, proxy):
        dbapi_connection.cursor().execute("SELECT 1")  # psycopg opens a transaction for it

    event.listen(engine, "checkout", on_checkout)
    for tenant in (A, B, A, A):
        with tenant_context(tenant), engine.connect() as conn:
            rows = set(conn.execute(text("SELECT tenant_id FROM notes")).scalars())
        assert rows == {tenant}
