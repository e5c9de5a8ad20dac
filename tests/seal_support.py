"""Sealed test databases, built the way a project's migrations seal a table, shared by the seal tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

import pgtenancy.alembic  # noqa: F401 (registers the operations)
from pgtenancy.testing import TestDatabase
from pgtenancy.testing.cluster import ClusterUnavailableError, start_standalone
from pgtenancy.testing.database import clone_database, create_roles, create_template

KEY_ENV = "PGTENANCY_TEST_SEAL_KEY"
DOCS = "CREATE TABLE docs (tenant_id uuid NOT NULL, body text)"
_ROLE_SETTINGS = text(
    "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
    "WHERE s.setdatabase = 0 AND r.rolname = :role"
)


def role_settings(conn: Connection, role: str) -> list[str] | None:
    """The settings ``ALTER ROLE role SET`` stored for every database, or None when there are none."""
    settings: list[str] | None = conn.execute(_ROLE_SETTINGS, {"role": role}).scalar()
    return settings


def seal_table(
    database: TestDatabase,
    key: bytes,
    *,
    create: str | None = DOCS,
    table: str = "docs",
    schema: str | None = None,
    seal_schema: str = "pgtenancy_seal",
) -> None:
    """As the owner: ``create`` the table (trusted test DDL), isolate, grant, seal it with key ``k1``."""
    owner = create_engine(database.url("owner"), poolclass=NullPool)
    os.environ[KEY_ENV] = key.hex()
    try:
        with owner.begin() as conn:
            if create is not None:
                conn.exec_driver_sql(create)
            op = Operations(MigrationContext.configure(conn))
            op.enable_tenant_isolation(table, schema=schema)
            op.grant_tenant_access(database.roles.app, table, schema=schema)
            op.create_tenant_seal(seal_schema)
            op.add_tenant_seal_key("k1", key_env=KEY_ENV, schema=seal_schema)
            op.seal_tenant_isolation(table, schema=schema, seal_schema=seal_schema)
    finally:
        del os.environ[KEY_ENV]
        owner.dispose()


@contextmanager
def statements_database(prefix: str) -> Iterator[TestDatabase]:
    """A database on a server of its own with pg_stat_statements loaded (that needs a restart) and created;
    skips the test when PostgreSQL's server binaries are missing."""
    try:
        server = start_standalone({"shared_preload_libraries": "pg_stat_statements"})
    except ClusterUnavailableError as error:
        pytest.skip(f"needs PostgreSQL server binaries to load pg_stat_statements: {error}")
    test_server = server.node.server()
    roles = create_roles(test_server, prefix=prefix)
    try:
        create_template(test_server, roles, prefix + "_template")
        database = clone_database(test_server, prefix + "_template", prefix, roles)
        admin = create_engine(database.url("admin"), poolclass=NullPool)
        with admin.begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION pg_stat_statements")
        admin.dispose()
        yield database
    finally:
        server.stop()
