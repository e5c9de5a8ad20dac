"""Scale-out tests run on their own servers: a local Citus cluster and a primary with a hot standby."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import URL, Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pgtenancy import instrument
from pgtenancy.testing import TestRoles
from pgtenancy.testing.cluster import CitusCluster
from tests.scaleout.schema import SCHEMA, isolated_table, seed

DRIVERNAMES = {"asyncpg": "postgresql+asyncpg", "psycopg": "postgresql+psycopg"}


@dataclass
class CitusApp:
    """The seeded Citus database and engines on it: the app role's (instrumented) and the superuser's."""

    cluster: CitusCluster
    roles: TestRoles
    _engines: list[Engine | AsyncEngine] = field(default_factory=list)

    def url(self, role: str = "app", driver: str = "psycopg") -> URL:
        if role == "admin":
            return self.cluster.url(drivername=DRIVERNAMES[driver])
        username = self.roles.app if role == "app" else self.roles.owner
        return self.cluster.url(
            username=username, password=self.roles.password, drivername=DRIVERNAMES[driver]
        )

    def engine(self, driver: str = "asyncpg", *, mode: str | None = "set_local", **options: Any) -> Any:
        """An app-role engine (pool of 4), instrumented with ``mode`` unless ``mode`` is None."""
        options = {"pool_size": 4, "max_overflow": 0, **options}
        url = self.url("app", driver)
        engine = create_async_engine(url, **options) if driver == "asyncpg" else create_engine(url, **options)
        if mode is not None:
            instrument(engine, mode=mode)
        self._engines.append(engine)
        return engine

    def admin(self) -> Engine:
        engine = create_engine(self.url("admin"), pool_size=1)
        self._engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self._engines:  # async pools are dropped, not closed: their event loop is gone
            if isinstance(engine, AsyncEngine):
                engine.sync_engine.dispose(close=False)
            else:
                engine.dispose()
        self._engines.clear()


@pytest.fixture(scope="session")
def citus_database(pgtenancy_citus: CitusCluster, pgtenancy_citus_roles: TestRoles) -> CitusCluster:
    """The cluster's database: schema ``tenancy`` (owner's, first on the search path), seeded notes."""
    roles = pgtenancy_citus_roles
    admin = create_engine(pgtenancy_citus.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA} AUTHORIZATION {roles.owner}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {roles.app}")
        conn.exec_driver_sql(f"ALTER DATABASE {pgtenancy_citus.database} SET search_path = {SCHEMA}, public")
    admin.dispose()
    owner = create_engine(pgtenancy_citus.url(username=roles.owner, password=roles.password))
    with owner.begin() as conn:
        isolated_table(conn, roles, "notes")
    owner.dispose()
    admin = create_engine(pgtenancy_citus.url())
    with admin.begin() as conn:
        seed(conn)
    admin.dispose()
    return pgtenancy_citus


@pytest.fixture
def citus_app(citus_database: CitusCluster, pgtenancy_citus_roles: TestRoles) -> Iterator[CitusApp]:
    """Engines on the seeded Citus database, disposed after the test."""
    app = CitusApp(citus_database, pgtenancy_citus_roles)
    yield app
    app.close()


@pytest.fixture
def owner(request: pytest.FixtureRequest, citus_app: CitusApp) -> Iterator[Connection]:
    """An autocommit owner connection in a fresh schema, the module's ``SCHEMA``, the app role may use."""
    schema = request.module.SCHEMA
    admin = citus_app.admin().execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema} AUTHORIZATION {citus_app.roles.owner}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {citus_app.roles.app}")
    engine = create_engine(citus_app.url("owner"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SET search_path = {schema}, public")
            yield conn
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
