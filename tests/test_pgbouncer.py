"""Isolation through PgBouncer in transaction mode, and why session-level settings leak there.

Transaction pooling hands one server connection to many clients, one transaction at a time: a
setting made with ``set_config(..., false)`` outlives its transaction and reaches the next client.
pgtenancy's transaction-local ``set_config(..., true)`` dies with its transaction.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import create_async_engine

from pgtenancy import instrument, tenant_context
from pgtenancy.testing import TestDatabase
from tests.conftest import ROWS_PER_TENANT, TENANTS

SETTING = "app.current_tenant_id"
SHARED = "leakdemo"  # a PgBouncer database with ONE server connection: every client shares it


@dataclass(frozen=True)
class Bouncer:
    """A PgBouncer in transaction mode on loopback, in front of the test database."""

    port: int
    database: TestDatabase

    def url(self, *, drivername: str, database: str | None = None, **query: str) -> URL:
        roles = self.database.roles
        return URL.create(
            drivername,
            username=roles.app,
            password=roles.password,
            host="127.0.0.1",
            port=self.port,
            database=database or self.database.name,
            query=query,
        )

    def connect(self, database: str = SHARED) -> psycopg.Connection:
        """A plain psycopg connection as the app role (no server-side prepared statements)."""
        return psycopg.connect(
            self.url(drivername="postgresql", database=database).render_as_string(hide_password=False),
            autocommit=True,
            prepare_threshold=None,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_address(database: TestDatabase) -> tuple[str, str]:
    url = database.server.admin_url
    host = url.query.get("host") or url.host or "localhost"
    port = url.query.get("port") or url.port or 5432
    return str(host), str(port)


def _run_as(host: str) -> int | None:
    """PgBouncer refuses to run as root: run it as the server's socket owner (embedded) or nobody."""
    if os.geteuid() != 0:
        return None
    if os.path.isdir(host) and os.stat(host).st_uid != 0:
        return os.stat(host).st_uid
    return pwd.getpwnam("nobody").pw_uid


@pytest.fixture(scope="module")
def pgbouncer(seeded: TestDatabase) -> Iterator[Bouncer]:
    binary = shutil.which("pgbouncer")
    if binary is None:
        pytest.skip("the pgbouncer binary is not installed (apt-get install -y pgbouncer; CI installs it)")
    host, port = _server_address(seeded)
    user = _run_as(host)
    workdir = Path(tempfile.mkdtemp(prefix="pgtenancy-bouncer-"))
    listen = _free_port()
    users = [seeded.roles.app, seeded.roles.owner, seeded.server.admin_url.username or "postgres"]
    (workdir / "userlist.txt").write_text("".join(f'"{name}" ""\n' for name in users))
    (workdir / "pgbouncer.ini").write_text(
        f"""[databases]
{SHARED} = host={host} port={port} dbname={seeded.name} pool_size=1
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = 3
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
server_reset_query =
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""
    )
    if user is not None:
        os.chown(workdir, user, -1)
        for child in workdir.iterdir():
            os.chown(child, user, -1)
    process = subprocess.Popen([binary, str(workdir / "pgbouncer.ini")], user=user)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = workdir / "pgbouncer.log"
                    pytest.fail("pgbouncer did not start: " + (log.read_text() if log.exists() else "no log"))
                time.sleep(0.05)
        yield Bouncer(listen, seeded)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


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
    """asyncpg through PgBouncer 1.18 (no prepared statements in transaction mode): no statement cache,
    unique statement names, and SQLAlchemy's own prepared statement cache off."""
    url = bouncer.url(drivername="postgresql+asyncpg", database=database, prepared_statement_cache_size="0")
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={
            "statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__pgtenancy_{uuid.uuid4().hex}__",
        },
    )
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
