"""Sealed tenant binding: injected SQL inside one tenant's transaction cannot read or write another's rows.

Every attack runs as the app role against policies sealed by the migration operations; the attacker knows
every setting name and can build any statement at run time, but not the key.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

import pgtenancy.alembic  # noqa: F401 (registers the operations)
from pgtenancy import ConfigurationError, instrument, tenant_context, without_tenant
from pgtenancy.seal import Seal, seal_value
from pgtenancy.testing import TestDatabase
from tests.bouncer import driver_options, start_bouncer
from tests.seal_support import KEY_ENV, seal_table

A, B = uuid.UUID(int=0x5EA1A), uuid.UUID(int=0x5EA1B)
ROWS = {A: 3, B: 4}
KEY = secrets.token_bytes(32)
NAME_AT_RUN_TIME = "'app.' || chr(99) || 'urrent_tenant_id'"  # the vetting cannot see this name


def operations(conn: Connection) -> Operations:
    return Operations(MigrationContext.configure(conn))


@pytest.fixture(scope="module")
def sealed(pgtenancy_database: TestDatabase) -> Iterator[TestDatabase]:
    """A ``docs`` table isolated, granted and sealed by the migration operations, with key ``k1``."""
    seal_table(
        pgtenancy_database,
        KEY,
        create="CREATE TABLE docs (tenant_id uuid NOT NULL "
        "DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid, "
        "id bigserial, body text NOT NULL, PRIMARY KEY (tenant_id, id))",
    )
    admin = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool)
    with admin.begin() as conn:
        for tenant, count in ROWS.items():
            conn.execute(
                text(
                    "INSERT INTO docs (tenant_id, body) SELECT :t, 'doc ' || g FROM generate_series(1, :n) g"
                ),
                {"t": tenant, "n": count},
            )
    admin.dispose()
    yield pgtenancy_database


@pytest.fixture
def engine(sealed: TestDatabase) -> Iterator[Engine]:
    engine = instrument(create_engine(sealed.url("app")), seal=Seal(KEY, key_id="k1"))
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(sealed: TestDatabase) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sealed.url("app", drivername="postgresql+asyncpg"))
    instrument(engine, seal=Seal(KEY, key_id="k1"))
    yield engine
    await engine.dispose()


def tenants_seen(conn: Connection) -> list[uuid.UUID]:
    return list(conn.execute(text("SELECT tenant_id FROM docs")).scalars())


def test_a_sealed_engine_sees_and_writes_its_own_rows(engine: Engine):
    with tenant_context(A), engine.begin() as conn:
        assert tenants_seen(conn) == [A] * ROWS[A]
        conn.execute(text("INSERT INTO docs (body) VALUES ('written sealed')"))
        assert len(tenants_seen(conn)) == ROWS[A] + 1
        conn.rollback()


async def test_a_sealed_asyncpg_engine_sees_its_own_rows(async_engine: AsyncEngine):
    for tenant in (A, B):
        async with tenant_context(tenant), async_engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM docs"))).scalars().all()
        assert rows == [tenant] * ROWS[tenant]


@pytest.mark.parametrize("mode", ["begin", "set_config"])
def test_an_unsealed_engine_reads_and_writes_nothing(sealed: TestDatabase, mode: str):
    """The plain setting alone, however it is set, no longer opens a sealed table."""
    engine = instrument(create_engine(sealed.url("app"), poolclass=NullPool), mode=mode)  # type: ignore[arg-type]
    try:
        with tenant_context(A), engine.connect() as conn:
            assert tenants_seen(conn) == []
            with pytest.raises(ProgrammingError, match="row-level security"):
                conn.execute(text("INSERT INTO docs (body) VALUES ('unsealed')"))
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "injection",
    [
        f"SELECT set_config({NAME_AT_RUN_TIME}, :b, true)",
        f"SELECT set_config({NAME_AT_RUN_TIME}, :b, false)",
        "DO $$ BEGIN PERFORM set_config(" + NAME_AT_RUN_TIME + ", '{b}', true); END $$",
        "SELECT set_config(x, :b, true) FROM (SELECT 'app.current_' || 'tenant_id' AS x) s",
    ],
)
def test_injected_sql_that_re_points_the_setting_reads_and_writes_nothing(engine: Engine, injection: str):
    with tenant_context(A), engine.connect() as conn:
        conn.execute(text(injection.replace("{b}", str(B))), {"b": str(B)} if ":b" in injection else {})
        assert conn.execute(text("SELECT current_setting('app.current_tenant_id')")).scalar() == str(B)
        assert tenants_seen(conn) == []  # neither B's rows nor A's: the seal no longer matches
        for change in (
            "UPDATE docs SET body = 'defaced' WHERE tenant_id = :b",
            "DELETE FROM docs WHERE tenant_id = :b",
        ):
            assert conn.execute(text(change), {"b": B}).rowcount == 0
        with pytest.raises(ProgrammingError, match="row-level security"):
            conn.execute(text("INSERT INTO docs (tenant_id, body) VALUES (:b, 'planted')"), {"b": B})
        conn.rollback()
    with without_tenant(), create_engine(engine.url, poolclass=NullPool).connect() as check:
        assert check.execute(text("SELECT count(*) FROM docs")).scalar() == 0  # (the app role sees nothing)


def _harvest(engine: Engine, tenant: uuid.UUID) -> tuple[str, int]:
    """The seal a sealed transaction of ``tenant`` carries, and its backend: what an attacker could copy."""
    with tenant_context(tenant), engine.connect() as conn:
        seal = conn.execute(text("SELECT current_setting('pgtenancy.seal')")).scalar()
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert isinstance(seal, str) and isinstance(pid, int)
    return seal, pid


def test_a_seal_harvested_from_another_backend_does_not_verify(sealed: TestDatabase, engine: Engine):
    victim = instrument(create_engine(sealed.url("app"), poolclass=NullPool), seal=Seal(KEY, key_id="k1"))
    try:
        seal, victim_pid = _harvest(victim, B)
    finally:
        victim.dispose()
    with tenant_context(A), engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != victim_pid
        conn.execute(text(f"SELECT set_config({NAME_AT_RUN_TIME}, :b, true)"), {"b": str(B)})
        conn.execute(text("SELECT set_config('pgtenancy.seal', :s, true)"), {"s": seal})
        assert tenants_seen(conn) == []


def test_only_a_seal_for_this_backend_and_tenant_and_time_verifies(engine: Engine):
    """The verifier's own conditions, each broken alone (the test holds the key, the attacker does not)."""
    with tenant_context(A), engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert isinstance(pid, int)
        now = int(time.time())

        def seen_with(seal: str, tenant: uuid.UUID = B) -> list[uuid.UUID]:
            conn.execute(text(f"SELECT set_config({NAME_AT_RUN_TIME}, :t, true)"), {"t": str(tenant)})
            conn.execute(text("SELECT set_config('pgtenancy.seal', :s, true)"), {"s": seal})
            return tenants_seen(conn)

        assert seen_with(seal_value(KEY, "k1", str(B), pid, now + 30)) == [B] * ROWS[B]  # the control
        assert seen_with(seal_value(KEY, "k1", str(B), pid, now - 5)) == []  # expired
        assert seen_with(seal_value(KEY, "k1", str(B), pid + 1, now + 30)) == []  # another backend
        assert seen_with(seal_value(KEY, "k1", str(A), pid, now + 30)) == []  # another tenant
        assert seen_with(seal_value(KEY, "k2", str(B), pid, now + 30)) == []  # an unknown key
        assert seen_with(seal_value(secrets.token_bytes(32), "k1", str(B), pid, now + 30)) == []  # wrong key
        assert seen_with("k1:99999999999:" + "0" * 64) == []
        assert seen_with("garbage") == [] and seen_with("") == []
        conn.rollback()


def test_the_app_role_cannot_read_the_keys_or_replace_the_verifier(engine: Engine):
    attempts = [
        "SELECT * FROM pgtenancy_seal.keys",
        "SELECT pgtenancy_seal.add_key('mine', decode(repeat('00', 32), 'hex'))",
        "CREATE OR REPLACE FUNCTION pgtenancy_seal.current_tenant() RETURNS text LANGUAGE sql "
        "AS $$ SELECT 'x' $$",
        "ALTER FUNCTION pgtenancy_seal.current_tenant() OWNER TO CURRENT_USER",
        "CREATE FUNCTION pgtenancy_seal.sha256(bytea) RETURNS bytea LANGUAGE sql AS $$ SELECT $1 $$",
        "ALTER POLICY pgtenancy_tenant_isolation ON docs USING (true)",
    ]
    for attempt in attempts:
        with tenant_context(A), engine.connect() as conn, pytest.raises(DBAPIError) as raised:
            conn.execute(text(attempt))
        assert raised.value.orig is not None and raised.value.orig.sqlstate == "42501", attempt  # type: ignore[union-attr]


def test_a_connection_reuses_its_seal_and_signs_again_before_it_expires(
    sealed: TestDatabase, monkeypatch: pytest.MonkeyPatch
):
    clock = [time.time()]
    monkeypatch.setattr("pgtenancy.seal.time.time", lambda: clock[0])  # the clock connections sign by
    engine = instrument(
        create_engine(sealed.url("app"), pool_size=1), seal=Seal(KEY, key_id="k1", lifetime=10)
    )
    try:
        first, _ = _harvest(engine, A)
        clock[0] += 4
        assert _harvest(engine, A)[0] == first  # cached within half the lifetime
        clock[0] += 2
        second, _ = _harvest(engine, A)
        assert second != first and int(second.split(":")[1]) > int(first.split(":")[1])
        with tenant_context(A), engine.connect() as conn:
            assert tenants_seen(conn) == [A] * ROWS[A]  # signed in the (simulated) future: still valid
    finally:
        engine.dispose()


def test_a_key_callable_is_read_when_signing_and_its_failure_refuses_the_transaction(sealed: TestDatabase):
    calls: list[int] = []

    def key() -> bytes:
        calls.append(1)
        if len(calls) > 1:
            raise KeyError("the secret store is down")
        return KEY

    engine = instrument(create_engine(sealed.url("app"), poolclass=NullPool), seal=Seal(key, key_id="k1"))
    try:
        with tenant_context(A), engine.connect() as conn:
            assert tenants_seen(conn) == [A] * ROWS[A]
        with tenant_context(B), engine.connect() as conn, pytest.raises(ConfigurationError, match="KeyError"):
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_key_rotation_keeps_two_keys_valid_then_drops_the_old_one(sealed: TestDatabase):
    new_key = secrets.token_bytes(48)
    owner = create_engine(sealed.url("owner"), poolclass=NullPool)
    old = instrument(create_engine(sealed.url("app"), poolclass=NullPool), seal=Seal(KEY, key_id="k1"))
    new = instrument(create_engine(sealed.url("app"), poolclass=NullPool), seal=Seal(new_key, key_id="k2"))
    try:
        os.environ[KEY_ENV] = new_key.hex()
        with owner.begin() as conn:
            operations(conn).add_tenant_seal_key("k2", key_env=KEY_ENV)
        for engine in (old, new):
            with tenant_context(B), engine.connect() as conn:
                assert tenants_seen(conn) == [B] * ROWS[B]
        with owner.begin() as conn:
            operations(conn).remove_tenant_seal_key("k1")
            conn.rollback()  # keep k1 for the other tests; inside the transaction k1 is gone
        with owner.begin() as conn:
            operations(conn).remove_tenant_seal_key("k2")
    finally:
        del os.environ[KEY_ENV]
        for engine in (old, new, owner):
            engine.dispose()
    with tenant_context(B), new.connect() as conn:
        assert tenants_seen(conn) == []  # k2 removed: its signatures no longer verify


def test_sealing_refuses_what_it_cannot_protect(sealed: TestDatabase):
    with pytest.raises(ConfigurationError, match="Citus"):
        instrument(create_engine(sealed.url("app")), mode="set_local", seal=Seal(KEY))
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        Seal(b"short")
    with pytest.raises(ConfigurationError, match="key id"):
        Seal(KEY, key_id="has:colon")
    with pytest.raises(ConfigurationError, match="setting of its own"):
        instrument(create_engine(sealed.url("app")), seal=Seal(KEY, setting="app.current_tenant_id"))


@pytest.mark.parametrize("drivername", ["postgresql+psycopg", "postgresql+asyncpg"])
async def test_sealing_refuses_connections_through_pgbouncer(sealed: TestDatabase, drivername: str):
    """PgBouncer hands the driver a backend pid of its own: the backend a seal names is unknown."""
    if shutil.which("pgbouncer") is None:
        pytest.skip("the pgbouncer binary is not installed (apt-get install -y pgbouncer; CI installs it)")
    query, connect_args = driver_options(drivername)
    with start_bouncer(sealed) as process:
        url = process.bouncer.url(drivername=drivername, **query)
        engine = create_async_engine(url, connect_args=connect_args, poolclass=NullPool)
        instrument(engine, seal=Seal(KEY, key_id="k1"))
        try:
            with pytest.raises(ConfigurationError, match="PgBouncer"):
                async with tenant_context(A), engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()


@pytest.mark.parametrize("drivername", ["postgresql+psycopg", "postgresql+asyncpg"])
async def test_the_seal_travels_in_every_mode_and_with_a_pipelined_first_statement(
    sealed: TestDatabase, drivername: str
):
    """mode="set_config" sends it after BEGIN; psycopg's executemany opens its transaction in pipeline mode,
    where each command travels alone."""
    for mode in ("begin", "set_config"):
        engine = create_async_engine(sealed.url("app", drivername=drivername), poolclass=NullPool)
        instrument(engine, mode=mode, seal=Seal(KEY, key_id="k1"))  # type: ignore[arg-type]
        try:
            async with tenant_context(B), engine.connect() as conn:
                update = text("UPDATE docs SET body = 'touched' WHERE tenant_id = :t AND id = :i")
                await conn.execute(update, [{"t": B, "i": i} for i in range(1, 200)])  # the first statement
                rows = (await conn.execute(text("SELECT tenant_id, body FROM docs"))).all()
                assert rows == [(B, "touched")] * ROWS[B]  # the executemany wrote: the seal was there
                await conn.rollback()
        finally:
            await engine.dispose()


def test_sealing_refuses_the_event_fallback(sealed: TestDatabase, monkeypatch: pytest.MonkeyPatch):
    import pgtenancy.engine as engine_module

    monkeypatch.setattr(engine_module, "adapter_for", lambda dialect: (None, "no adapter in this test"))
    with pytest.raises(ConfigurationError, match="sealing needs a driver adapter"):
        instrument(create_engine(sealed.url("app")), seal=Seal(KEY))


def test_assert_tenant_isolated_needs_the_seal_and_proves_a_sealed_table(sealed: TestDatabase):
    from pgtenancy.testing import assert_tenant_isolated

    url = sealed.url("app")
    with pytest.raises(AssertionError, match="sealed"):
        assert_tenant_isolated(url, "docs", [A, B])  # unsealed probes would see nothing, proving nothing
    assert_tenant_isolated(url, "docs", [A, B], seal=Seal(KEY, key_id="k1"))
    owner = create_engine(sealed.url("owner"), poolclass=NullPool)
    try:
        with owner.begin() as conn:  # a second, plain policy beside the sealed one lets the setting in
            conn.exec_driver_sql(
                "CREATE POLICY plain_read ON docs FOR SELECT "
                "USING (tenant_id::text = current_setting('app.current_tenant_id', true))"
            )
        with pytest.raises(AssertionError, match="not isolated"):
            assert_tenant_isolated(url, "docs", [A, B], seal=Seal(KEY, key_id="k1"))
    finally:
        with owner.begin() as conn:
            conn.exec_driver_sql("DROP POLICY IF EXISTS plain_read ON docs")
        owner.dispose()


def test_assert_no_findings_passes_declared_sealing_on(sealed: TestDatabase):
    from pgtenancy.testing import assert_no_findings

    admin, app = sealed.url("admin"), sealed.roles.app
    assert_no_findings(admin, role=app, dynamic=False, ignore=["PGT054"])  # notes: plain, not declared
    with pytest.raises(AssertionError, match=r"PGT052.*notes"):
        assert_no_findings(admin, role=app, dynamic=False, ignore=["PGT054"], sealed=True)
