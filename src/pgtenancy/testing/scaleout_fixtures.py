"""pytest fixtures for scale-out tests: a Citus cluster and a streaming read replica, one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.pool import NullPool

from pgtenancy.testing.cluster import (
    CitusCluster,
    ClusterUnavailableError,
    ReplicaPair,
    start_citus_cluster,
    start_replica_pair,
)
from pgtenancy.testing.database import TestRoles, create_roles, drop_roles

__all__ = ["pgtenancy_citus", "pgtenancy_citus_roles", "pgtenancy_replica"]

_quote = postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def pgtenancy_citus() -> Iterator[CitusCluster]:
    """A Citus coordinator and two workers on loopback (skipped, with the reason, when Citus is missing)."""
    try:
        cluster = start_citus_cluster()
    except ClusterUnavailableError as error:
        pytest.skip("no local Citus cluster: " + str(error))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pgtenancy_citus_roles(pgtenancy_citus: CitusCluster) -> Iterator[TestRoles]:
    """An owner role and a NOSUPERUSER NOBYPASSRLS app role, made on the coordinator (Citus copies them).

    Whatever they own or were granted is dropped with them at the end of the session. As in the
    databases of ``pgtenancy_database``, PUBLIC holds no TEMPORARY on the cluster's database.
    """
    roles = create_roles(pgtenancy_citus.server)
    engine = create_engine(pgtenancy_citus.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "REVOKE TEMPORARY ON DATABASE " + _quote(pgtenancy_citus.database) + " FROM PUBLIC"
        )
    yield roles
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "DROP OWNED BY " + _quote(roles.app) + ", " + _quote(roles.owner) + " CASCADE"
            )
    finally:
        engine.dispose()
    drop_roles(pgtenancy_citus.server, roles)


@pytest.fixture(scope="session")
def pgtenancy_replica() -> Iterator[ReplicaPair]:
    """A primary and a hot standby streaming from it (skipped, with the reason, without the binaries)."""
    try:
        pair = start_replica_pair()
    except ClusterUnavailableError as error:
        pytest.skip("no local primary/standby pair: " + str(error))
    try:
        yield pair
    finally:
        pair.stop()
