"""Every refusal is typed, happens before any statement runs, and leaves no data changed."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_cursor
from sqlalchemy.ext.asyncio import async_sessionmaker

from pgtenancy import (
    AutocommitError,
    InvalidTenantError,
    NoTenantError,
    TenancyError,
    TenantSwitchError,
    UnsafeRoleError,
    instrument,
    tenant_context,
    without_tenant,
)
from pgtenancy.errors import ConfigurationError
from pgtenancy.jobs import run_in_executor
from tests.conftest import ROWS_PER_TENANT, TENANTS
from tests.models import Note

A, B = TENANTS[0], TENANTS[1]
INJECTIONS = ["'; DROP TABLE notes; --", "00000000-0000-0000-0000-00000000000a'; DELETE FROM notes; --"]


async def statement_log(engine, monkeypatch):
    """Every statement handed to asyncpg's cursor from now on: the last step before the driver.

    The engine is connected once first, so SQLAlchemy's own set-up queries are not counted.
    """
    async with engine.connect():
        pass
    sent = []

    def recording(run):
        def record(cursor, operation, *args):
            sent.append(operation)
            return run(cursor, operation, *args)

        return record

    for name in ("execute", "executemany"):
        monkeypatch.setattr(
            AsyncAdapt_asyncpg_cursor, name, recording(getattr(AsyncAdapt_asyncpg_cursor, name))
        )
    return sent


def sequence_value(database):
    """The notes id sequence as the superuser sees it: any statement that reached the server moves it."""
    return admin_count(database, "SELECT last_value FROM notes_id_seq")


def admin_count(database, sql="SELECT count(*) FROM notes"):
    engine = create_engine(database.url("admin"))
    with engine.connect() as conn:
        value = conn.execute(text(sql)).scalar_one()
    engine.dispose()
    return value


def test_errors_form_one_hierarchy():
    for error in (AutocommitError, InvalidTenantError, NoTenantError, TenantSwitchError, UnsafeRoleError):
        assert issubclass(error, TenancyError)


async def test_no_tenant_raises_before_any_statement(seeded, pgtenancy_engine_factory, monkeypatch):
    engine = pgtenancy_engine_factory("asyncpg")
    sent = await statement_log(engine, monkeypatch)
    before, sequence = admin_count(seeded), sequence_value(seeded)
    async with engine.connect() as conn:
        with pytest.raises(NoTenantError, match="tenant_context"):
            await conn.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'x')"), {"t": A})
    async with engine.connect() as conn:
        with pytest.raises(NoTenantError):
            await conn.execute(text("SELECT nextval('notes_id_seq')"))
    factory = async_sessionmaker(engine)
    async with factory() as session:
        with pytest.raises(NoTenantError):
            await session.scalars(select(Note))
    assert sent == []
    assert (admin_count(seeded), sequence_value(seeded)) == (before, sequence)
    async with tenant_context(A), engine.connect() as conn:  # the same pool still works afterwards
        assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one() == ROWS_PER_TENANT[A]
    await engine.dispose()


def test_no_tenant_sync(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg")
    with engine.connect() as conn, pytest.raises(NoTenantError) as refused:
        conn.execute(text("SELECT 1"))
    assert "run_in_executor" not in str(refused.value)  # the thread advice is for threads only


async def test_executor_work_without_the_tenant_is_told_about_run_in_executor(
    seeded, pgtenancy_engine_factory
):
    engine = pgtenancy_engine_factory("psycopg")

    def count() -> int:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM notes")).scalar_one()

    async with tenant_context(A):
        with pytest.raises(NoTenantError, match=r"start it with pgtenancy\.jobs\.run_in_executor\("):
            await asyncio.get_running_loop().run_in_executor(None, count)
        assert await run_in_executor(None, count) == ROWS_PER_TENANT[A]


async def test_on_missing_empty_runs_with_no_tenant(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", on_missing="empty")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one() == 0
    await engine.dispose()


@pytest.mark.parametrize("bad", INJECTIONS)
async def test_malformed_tenant_never_reaches_the_database(
    seeded, pgtenancy_engine_factory, monkeypatch, bad
):
    engine = pgtenancy_engine_factory("asyncpg")
    sent = await statement_log(engine, monkeypatch)
    async with tenant_context(bad), engine.connect() as conn:
        with pytest.raises(InvalidTenantError):
            await conn.execute(text("SELECT count(*) FROM notes"))
    assert sent == []
    assert admin_count(seeded) == sum(ROWS_PER_TENANT.values())
    await engine.dispose()


async def test_int_engine_rejects_uuid_and_injection(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", key_type="int", mode="set_local")
    for bad in (A, "1; RESET ALL", "1 OR 1=1"):
        async with tenant_context(bad), engine.connect() as conn:
            with pytest.raises(InvalidTenantError):
                await conn.execute(text("SELECT 1"))
    await engine.dispose()


async def test_engine_level_autocommit_is_refused(seeded, pgtenancy_engine_factory, monkeypatch):
    engine = pgtenancy_engine_factory("asyncpg", engine_options={"isolation_level": "AUTOCOMMIT"})
    sent = await statement_log(engine, monkeypatch)
    async with tenant_context(A), engine.connect() as conn:
        with pytest.raises(AutocommitError):
            await conn.execute(text("SELECT count(*) FROM notes"))
    assert sent == []
    await engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_connection_level_autocommit_is_refused(seeded, pgtenancy_engine_factory, driver):
    engine = pgtenancy_engine_factory(driver)
    async with tenant_context(A), engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(AutocommitError):
            await conn.execute(text("DELETE FROM notes"))
    assert admin_count(seeded) == sum(ROWS_PER_TENANT.values())
    await engine.dispose()


def test_sync_autocommit_is_refused(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg")
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    with tenant_context(A), conn, pytest.raises(AutocommitError):
        conn.execute(text("SELECT 1"))


async def test_switching_tenant_inside_a_transaction_is_refused(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    async with tenant_context(A), engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        async with tenant_context(B):
            with pytest.raises(TenantSwitchError):
                await conn.execute(text("SELECT count(*) FROM notes"))
        async with without_tenant():
            with pytest.raises(TenantSwitchError):
                await conn.execute(text("SELECT count(*) FROM notes"))
        # the same tenant given in another form is the same tenant
        async with tenant_context(str(A).upper()):
            assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one() == ROWS_PER_TENANT[A]
    await engine.dispose()


async def test_session_shared_across_tasks_is_refused(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    session = async_sessionmaker(engine)()

    async def read(tenant):
        async with tenant_context(tenant):
            return (await session.scalars(select(Note.tenant_id))).all()

    assert set(await asyncio.create_task(read(A))) == {A}
    with pytest.raises(TenantSwitchError):
        await asyncio.create_task(read(B))
    await session.close()
    await engine.dispose()


def test_instrument_rejects_bad_configuration(pgtenancy_engine_factory, pgtenancy_database):
    engine = pgtenancy_engine_factory("psycopg", instrumented=False)
    with pytest.raises(ConfigurationError):
        instrument(engine, setting="app.tenant; RESET ALL")
    with pytest.raises(ConfigurationError):
        instrument(engine, key_type="bigint")
    with pytest.raises(ConfigurationError):
        instrument(engine, on_missing="ignore")
    with pytest.raises(ConfigurationError):
        instrument(object())
    instrument(engine)
    instrument(engine)  # idempotent
    with pytest.raises(ConfigurationError, match="already instrumented"):
        instrument(engine, key_type="int")


# -- roles that would bypass RLS -------------------------------------------------------------------


def test_superuser_is_refused(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg", role="admin")
    with (
        pytest.raises(UnsafeRoleError, match="superuser"),
        tenant_context(A),
        engine.connect() as conn,
    ):  # refused when connecting or at BEGIN
        conn.execute(text("SELECT count(*) FROM notes"))


def test_owner_of_an_unforced_table_is_refused(seeded, pgtenancy_owner_engine, pgtenancy_engine_factory):
    with pgtenancy_owner_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE unforced (tenant_id uuid)")
        conn.exec_driver_sql("ALTER TABLE unforced ENABLE ROW LEVEL SECURITY")
    try:
        engine = pgtenancy_engine_factory("psycopg", role="owner")
        with (
            pytest.raises(UnsafeRoleError, match="unforced"),
            tenant_context(A),
            engine.connect() as conn,
        ):  # refused when connecting or at BEGIN
            conn.execute(text("SELECT 1"))
    finally:
        with pgtenancy_owner_engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE unforced")
    # the owner of FORCEd tables only is bound by RLS like anyone else
    engine = pgtenancy_engine_factory("psycopg", role="owner")
    with tenant_context(A), engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar_one() == ROWS_PER_TENANT[A]


@pytest.mark.parametrize("attribute", ["BYPASSRLS", "MEMBER"])
def test_bypassrls_roles_and_their_members_are_refused(seeded, pgtenancy_server, attribute):
    name = "pgt_risky_" + secrets.token_hex(4)
    admin = create_engine(seeded.url("admin"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if attribute == "BYPASSRLS":
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN BYPASSRLS PASSWORD 'pw'")
        else:
            conn.exec_driver_sql(f"CREATE ROLE {name}_admin NOLOGIN BYPASSRLS")
            conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {name}_admin")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {name}")
        conn.exec_driver_sql(f"GRANT SELECT ON notes TO {name}")
    engine = instrument(
        create_engine(pgtenancy_server.url(database=seeded.name, username=name, password="pw"))
    )
    try:
        with (
            pytest.raises(UnsafeRoleError, match="BYPASSRLS"),
            tenant_context(A),
            engine.connect() as conn,
        ):  # refused when connecting or at BEGIN
            conn.execute(text("SELECT count(*) FROM notes"))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {name}")
            conn.exec_driver_sql(f"DROP ROLE {name}")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {name}_admin")
        admin.dispose()


def test_verify_role_false_is_an_explicit_opt_out(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("psycopg", role="admin", verify_role=False)
    with (
        tenant_context(A),
        engine.connect() as conn,
    ):  # a superuser bypasses RLS: this is why the check exists
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar_one() == sum(ROWS_PER_TENANT.values())


async def test_superuser_is_refused_on_asyncpg_and_the_pool_recovers(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg", role="admin")
    for _ in range(2):  # the refused connection is closed, not pooled: the next checkout is checked again
        with pytest.raises(UnsafeRoleError, match="superuser"):
            async with tenant_context(A), engine.connect() as conn:
                await conn.execute(text("SELECT count(*) FROM notes"))
    await engine.dispose()
