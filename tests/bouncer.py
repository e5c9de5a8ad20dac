"""A PgBouncer in transaction mode on loopback, started (and restarted) in front of a test database.

Shared by the PgBouncer tests and the fault-injection soak (``python -m benchmarks.soak``). PgBouncer
refuses to run as root, so as root it runs as the owner of the server's socket directory (the embedded
server's own user) or as ``nobody``. PgBouncer 1.18 has no prepared statements in transaction mode:
``driver_options`` gives what each driver needs to do without them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import URL

from pgtenancy.testing import TestDatabase

SHARED = "leakdemo"  # a PgBouncer database with ONE server connection: every client shares it
START_SECONDS = 10.0  # how long PgBouncer may take to listen
STOP_SECONDS = 10.0  # how long it may take to exit after SIGTERM (then it is killed)


class BouncerError(RuntimeError):
    """PgBouncer is not installed, or did not start."""


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


def _statement_name() -> str:
    return f"__pgtenancy_{uuid.uuid4().hex}__"


def driver_options(drivername: str) -> tuple[dict[str, str], dict[str, Any]]:
    """URL query and ``connect_args`` for a SQLAlchemy driver through PgBouncer 1.18 in transaction mode.

    asyncpg: no statement cache, unique statement names, and SQLAlchemy's own prepared statement cache
    off; psycopg 3: never prepare server-side.
    """
    if drivername.endswith("+asyncpg"):
        return (
            {"prepared_statement_cache_size": "0"},
            {"statement_cache_size": 0, "prepared_statement_name_func": _statement_name},
        )
    return {}, {"prepare_threshold": None}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_address(database: TestDatabase) -> tuple[str, str]:
    url = database.server.admin_url
    host = url.query.get("host") or url.host or "localhost"
    port = url.query.get("port") or url.port or 5432
    return str(host), str(port)


def run_as(host: str) -> int | None:
    """PgBouncer refuses to run as root: run it as the server's socket owner (embedded) or nobody."""
    if os.geteuid() != 0:
        return None
    if os.path.isdir(host) and os.stat(host).st_uid != 0:
        return os.stat(host).st_uid
    return pwd.getpwnam("nobody").pw_uid


class BouncerProcess:
    """One PgBouncer process with its work directory; ``restart()`` keeps its port and configuration."""

    def __init__(
        self, binary: str, database: TestDatabase, *, pool_size: int, settings: Mapping[str, str]
    ) -> None:
        self.binary = binary
        self.bouncer = Bouncer(free_port(), database)
        self.workdir = Path(tempfile.mkdtemp(prefix="pgtenancy-bouncer-"))
        host, port = server_address(database)
        self.user = run_as(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config(host, port, pool_size, settings)

    def _write_config(self, host: str, port: str, pool_size: int, settings: Mapping[str, str]) -> None:
        database = self.bouncer.database
        users = [database.roles.app, database.roles.owner, database.server.admin_url.username or "postgres"]
        (self.workdir / "userlist.txt").write_text("".join(f'"{name}" ""\n' for name in users))
        extra = "".join(f"{name} = {value}\n" for name, value in settings.items())
        (self.workdir / "pgbouncer.ini").write_text(
            f"""[databases]
{SHARED} = host={host} port={port} dbname={database.name} pool_size=1
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.bouncer.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
ignore_startup_parameters = extra_float_digits,options
server_reset_query =
logfile = {self.workdir / "pgbouncer.log"}
pidfile = {self.workdir / "pgbouncer.pid"}
{extra}"""
        )
        if self.user is not None:
            os.chown(self.workdir, self.user, -1)
            for child in self.workdir.iterdir():
                os.chown(child, self.user, -1)

    def start(self) -> None:
        """Start PgBouncer and wait (at most ``START_SECONDS``) until it accepts connections."""
        process = self._process = subprocess.Popen(
            [self.binary, "--quiet", str(self.workdir / "pgbouncer.ini")], user=self.user
        )
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.bouncer.port), timeout=0.2).close()
                return
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.workdir / "pgbouncer.log"
                    raise BouncerError(
                        "pgbouncer did not start: " + (log.read_text() if log.exists() else "no log")
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Shut PgBouncer down at once (SIGTERM: its clients are disconnected), killing it if it lingers."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)

    def restart(self) -> None:
        """Stop and start again on the same port: every client connection is cut."""
        self.stop()
        self.start()


@contextmanager
def start_bouncer(
    database: TestDatabase, *, pool_size: int = 3, settings: Mapping[str, str] | None = None
) -> Iterator[BouncerProcess]:
    """A running PgBouncer in front of ``database``; stopped and its files removed on exit.

    :param pool_size: server connections per database and user (``default_pool_size``).
    :param settings: more ``[pgbouncer]`` settings (trusted constants).
    """
    binary = shutil.which("pgbouncer")
    if binary is None:
        raise BouncerError("the pgbouncer binary is not installed (apt-get install -y pgbouncer)")
    process = BouncerProcess(binary, database, pool_size=pool_size, settings=settings or {})
    try:
        process.start()
        yield process
    finally:
        process.stop()
        shutil.rmtree(process.workdir, ignore_errors=True)
