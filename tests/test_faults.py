"""A fault while the tenant is being applied never leaves a transaction running without it, unrefused."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError

from pgtenancy import TenancyError, tenant_context
from pgtenancy import engine as engine_module
from pgtenancy.drivers import ConnectionState
from tests.conftest import TENANTS

A = TENANTS[0]
READ = text("SELECT DISTINCT tenant_id FROM notes")


def fail_next_apply_after_begin(monkeypatch):
    """Make the next statement a driver sends after BEGIN to apply the tenant fail on the server."""
    begin, failures = ConnectionState.begin, [1]

    def failing(self):
        reset, apply, seal = begin(self)
        if apply is not None and failures:
            failures.pop()
            return reset, "SELECT 1/0", seal
        return reset, apply, seal

    monkeypatch.setattr(ConnectionState, "begin", failing)


def fail_next_apply(engine, monkeypatch):
    """Make the next statement that applies the tenant fail on the server (as a timeout or a kill would)."""
    instrumentation = engine_module._instrumented[getattr(engine, "sync_engine", engine)]
    resolve, failures = instrumentation.resolve, [1]

    def failing(binding):
        value, sql, kind = resolve(binding)
        if failures:
            failures.pop()
            return value, "SELECT 1/0", kind
        return value, sql, kind

    monkeypatch.setattr(instrumentation, "resolve", failing)


@pytest.mark.parametrize("mode", ["set_config", "set_local"])
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_a_failed_apply_on_a_reused_connection_is_refused_or_carries_the_tenant(
    seeded, pgtenancy_engine_factory, monkeypatch, driver, mode
):
    engine = pgtenancy_engine_factory(driver, mode=mode, engine_options={"pool_size": 1, "max_overflow": 0})
    fail_next_apply_after_begin(monkeypatch)
    seen = []
    async with tenant_context(A), engine.connect() as conn:
        with pytest.raises(DBAPIError, match="division by zero"):
            await conn.execute(READ)
        for _ in range(3):  # the application keeps using the same Core connection
            await conn.rollback()
            try:
                seen.append(set((await conn.execute(READ)).scalars()))
            except (TenancyError, DBAPIError, InterfaceError) as error:
                seen.append(type(error).__name__)
    # never a silent empty result: every read is A's rows, or refused; and the connection recovers
    assert all(outcome == {A} or isinstance(outcome, str) for outcome in seen), seen
    assert seen[-1] == {A}, seen
    await engine.dispose()


def test_a_failed_apply_on_the_event_path_is_refused(seeded, pgtenancy_engine_factory, monkeypatch):
    monkeypatch.setattr(engine_module, "adapter_for", lambda dialect: (None, "the event path, in this test"))
    with pytest.warns(engine_module.FallbackWarning):
        engine = pgtenancy_engine_factory("psycopg", mode="set_config", engine_options={"pool_size": 1})
    fail_next_apply(engine, monkeypatch)
    seen = []
    with tenant_context(A), engine.connect() as conn:
        with pytest.raises(DBAPIError, match="division by zero"):
            conn.execute(READ)
        for _ in range(3):
            conn.rollback()
            try:
                seen.append(set(conn.execute(READ).scalars()))
            except (TenancyError, DBAPIError) as error:
                seen.append(type(error).__name__)
    assert all(outcome == {A} or isinstance(outcome, str) for outcome in seen), seen
    assert seen[-1] == {A} or "NoTenantError" in seen, seen
