"""The hardening operation: an app role without TEMPORARY cannot create temporary tables at all."""

from __future__ import annotations

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

import pgtenancy.alembic  # noqa: F401 - registers the operations
from pgtenancy import tenant_context
from pgtenancy.alembic import RevokeTemporaryTablesOp
from tests.conftest import TENANTS

A = TENANTS[0]
CREATE_TEMP = text("CREATE TEMP TABLE scratch AS SELECT tenant_id FROM notes")


def test_revoke_temporary_tables_denies_them_and_its_reverse_gives_them_back(
    seeded, pgtenancy_engine_factory
):
    admin = create_engine(seeded.url("admin"))
    engine = pgtenancy_engine_factory("psycopg")
    try:
        with admin.begin() as conn:
            Operations(MigrationContext.configure(conn)).revoke_temporary_tables(seeded.roles.app)
            Operations(MigrationContext.configure(conn)).revoke_temporary_tables(
                seeded.roles.app
            )  # idempotent
        engine.dispose()  # new sessions see the new privileges
        with tenant_context(A), engine.connect() as conn, pytest.raises(DBAPIError, match="temporary tables"):
            conn.execute(CREATE_TEMP)
        with admin.begin() as conn:
            Operations(MigrationContext.configure(conn)).invoke(
                RevokeTemporaryTablesOp(seeded.roles.app).reverse()
            )
        engine.dispose()
        with tenant_context(A), engine.begin() as conn:
            conn.execute(CREATE_TEMP)  # PostgreSQL's default is back
    finally:
        with admin.begin() as conn:  # PostgreSQL's default, whatever the test reached
            Operations(MigrationContext.configure(conn)).grant_temporary_tables(seeded.roles.app)
        admin.dispose()
