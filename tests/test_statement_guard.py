"""SQL that would re-point the tenant setting, or end the transaction carrying it, is refused unsent.

This is the path an SQL injection takes: one injectable query re-points the setting to another tenant.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from pgtenancy import UnsafeStatementError, tenant_context
from tests.conftest import ROWS_PER_TENANT, TENANTS

A, B = TENANTS[0], TENANTS[1]
DRIVERS = ["asyncpg", "psycopg_async"]
REPOINTING = [
    f"SET app.current_tenant_id = '{B}'",
    f"SET LOCAL app.current_tenant_id = '{B}'",
    f'set local "APP"."Current_Tenant_Id" to \'{B}\'',
    f"SET app . current_tenant_id = '{B}'",
    f"SET app/* a comment */.current_tenant_id = '{B}'",
    f"SET SESSION app.current_tenant_id = '{B}'",
    "RESET app.current_tenant_id",
    f"SELECT set_config('app.current_tenant_id', '{B}', true)",
    f"SELECT pg_catalog.set_config('APP.CURRENT_TENANT_ID', '{B}', false)",
    f"DO $$ BEGIN PERFORM set_config('app.current_tenant_id', '{B}', true); END $$",
    f"UPDATE pg_settings SET setting = '{B}' WHERE name = 'app.current_tenant_id'",
    f"ALTER ROLE CURRENT_USER SET app.current_tenant_id = '{B}'",
]
TRANSACTION_CONTROL = [
    "COMMIT",
    "END",
    "ROLLBACK",
    "BEGIN",
    "START TRANSACTION",
    "ABORT",
    "PREPARE p AS SELECT 1",
]


async def visible(conn):
    return set((await conn.execute(text("SELECT DISTINCT tenant_id FROM notes"))).scalars())


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("statement", REPOINTING)
async def test_statements_naming_the_setting_are_refused(seeded, pgtenancy_engine_factory, driver, statement):
    engine = pgtenancy_engine_factory(driver)
    async with tenant_context(A), engine.connect() as conn:
        assert await visible(conn) == {A}
        with pytest.raises(UnsafeStatementError, match="tenant setting"):
            await conn.execute(text(statement))
        assert await visible(conn) == {A}  # the transaction still carries A, and only A
    await engine.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_savepoint_chain_and_a_parameter_cannot_repoint_either(
    seeded, pgtenancy_engine_factory, driver
):
    engine = pgtenancy_engine_factory(driver)
    async with tenant_context(A), engine.connect() as conn:
        await conn.execute(text("SAVEPOINT sp"))
        with pytest.raises(UnsafeStatementError):
            await conn.execute(text(f"SET LOCAL app.current_tenant_id = '{B}'"))
        await conn.execute(text("RELEASE SAVEPOINT sp"))
        with pytest.raises(UnsafeStatementError, match="parameter"):
            await conn.execute(
                text("SELECT set_config(:name, :value, true)"),
                {"name": "app.current_tenant_id", "value": str(B)},
            )
        assert await visible(conn) == {A}
        # reading the setting is allowed, and other settings may still be set
        assert (
            await conn.execute(text("SELECT current_setting('app.current_tenant_id')"))
        ).scalar_one() == str(A)
        await conn.execute(text("SELECT set_config('statement_timeout', '5s', true)"))
    await engine.dispose()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("statement", TRANSACTION_CONTROL)
async def test_transaction_control_sent_as_sql_is_refused(
    seeded, pgtenancy_engine_factory, driver, statement
):
    engine = pgtenancy_engine_factory(driver)
    async with tenant_context(A), engine.connect() as conn:
        assert await visible(conn) == {A}
        with pytest.raises(UnsafeStatementError, match="sent as SQL"):
            await conn.execute(text(statement))
        assert await visible(conn) == {A}
    await engine.dispose()


async def test_a_multi_statement_string_cannot_smuggle_either(seeded, pgtenancy_engine_factory):
    """psycopg sends a parameterless string as one simple query: every statement in it is read."""
    engine = pgtenancy_engine_factory("psycopg_async")
    async with tenant_context(A), engine.connect() as conn:
        for chained in (
            f"SELECT 1; SET LOCAL app.current_tenant_id = '{B}'; SELECT 2",
            f"SELECT 1; COMMIT; SET app.current_tenant_id = '{B}'",
            "SELECT 1; COMMIT; SELECT count(*) FROM notes",
        ):
            with pytest.raises(UnsafeStatementError):
                await conn.exec_driver_sql(chained)
        assert await visible(conn) == {A}
        await conn.commit()
    async with tenant_context(B), engine.connect() as conn:  # the next transaction, the next tenant
        assert len((await conn.execute(text("SELECT tenant_id FROM notes"))).all()) == ROWS_PER_TENANT[B]
    await engine.dispose()


async def test_innocent_statements_that_look_alike_pass(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    async with tenant_context(A), engine.begin() as conn:
        await conn.execute(text("SELECT 'commit; set app.other = 1' AS s"))
        await conn.execute(text("SAVEPOINT s1"))
        await conn.execute(text("ROLLBACK TO SAVEPOINT s1"))
        await conn.execute(text("SET LOCAL lock_timeout = '3s'"))
        await conn.execute(text("INSERT INTO notes (body) VALUES ('x') ON CONFLICT DO NOTHING"))
        await conn.execute(text("DO $$ BEGIN PERFORM 1; END $$"))  # the END of a dollar-quoted body
        with pytest.raises(DBAPIError):  # reaches the server, which says the setting has no such value
            await conn.execute(text("SELECT current_setting('app.no_such_setting')"))
    await engine.dispose()
