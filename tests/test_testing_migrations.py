"""alembic_schema: a template database built by a project's own Alembic migrations."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pgtenancy.example.migrate import MIGRATIONS
from pgtenancy.testing import TestServer
from pgtenancy.testing.database import TestRoles, create_template, drop_database
from pgtenancy.testing.migrations import MigrationFailedError, alembic_schema


def test_the_example_migrations_build_an_isolated_template(
    pgtenancy_server: TestServer, pgtenancy_roles: TestRoles
) -> None:
    name = "pgt_alembic_schema_" + secrets.token_hex(3)
    create_template(pgtenancy_server, pgtenancy_roles, name, alembic_schema(script_location=MIGRATIONS))
    engine = create_engine(pgtenancy_server.url(database=name))
    try:
        with engine.connect() as conn:
            flags = conn.execute(
                text(
                    "SELECT relname, relrowsecurity AND relforcerowsecurity, "
                    "has_table_privilege(:app, oid, 'SELECT'), pg_get_userbyid(relowner) = :owner "
                    "FROM pg_class WHERE relname IN ('projects', 'tasks') ORDER BY relname"
                ),
                {"app": pgtenancy_roles.app, "owner": pgtenancy_roles.owner},
            ).all()
        assert [tuple(row) for row in flags] == [("projects", True, True, True), ("tasks", True, True, True)]
    finally:
        engine.dispose()
        drop_database(pgtenancy_server, name)


def test_migrations_that_create_nothing_fail_the_template(
    pgtenancy_server: TestServer, pgtenancy_roles: TestRoles, tmp_path: Path
) -> None:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text("")  # an env.py that never migrates the config's database
    name = "pgt_alembic_schema_" + secrets.token_hex(3)
    try:
        with pytest.raises(MigrationFailedError, match="created nothing"):
            create_template(pgtenancy_server, pgtenancy_roles, name, alembic_schema(script_location=tmp_path))
    finally:
        drop_database(pgtenancy_server, name)
