"""Shared schema and seed data: tenant tables protected by RLS, as the migrations will create them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, create_engine, text

from pgtenancy.testing import TestDatabase, TestRoles

TENANTS = [uuid.UUID(int=0xA000 + n) for n in range(5)]
ROWS_PER_TENANT = {tenant: 3 + n for n, tenant in enumerate(TENANTS)}
INT_TENANTS = [101, 202, 303]

_POLICY = "{col} = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::{typ})"


def _isolated_table(conn: Connection, roles: TestRoles, table: str, key_sql: str) -> None:
    default = f"NULLIF(current_setting('app.current_tenant_id', true), '')::{key_sql}"
    predicate = _POLICY.format(col="tenant_id", typ=key_sql)
    conn.exec_driver_sql(
        f"CREATE TABLE {table} (id bigserial, tenant_id {key_sql} NOT NULL DEFAULT {default}, "
        f"body text NOT NULL, PRIMARY KEY (tenant_id, id))"
    )
    conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    conn.exec_driver_sql(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    conn.exec_driver_sql(
        f"CREATE POLICY tenant_isolation ON {table} USING ({predicate}) WITH CHECK ({predicate})"
    )
    conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {roles.app}")
    conn.exec_driver_sql(f"GRANT USAGE ON SEQUENCE {table}_id_seq TO {roles.app}")


def build_schema(conn: Connection, roles: TestRoles) -> None:
    """Test-only DDL with trusted constants; the library's own DDL comes from its migration ops."""
    _isolated_table(conn, roles, "notes", "uuid")
    _isolated_table(conn, roles, "int_notes", "bigint")


@pytest.fixture(scope="session")
def pgtenancy_schema() -> Callable[[Connection, TestRoles], None]:
    return build_schema


@pytest.fixture(scope="module")
def seeded(pgtenancy_database: TestDatabase) -> Iterator[TestDatabase]:
    """The module's database with ROWS_PER_TENANT notes per tenant (inserted by the superuser)."""
    engine = create_engine(pgtenancy_database.url("admin"))
    with engine.begin() as conn:
        for tenant, count in ROWS_PER_TENANT.items():
            conn.execute(
                text(
                    "INSERT INTO notes (tenant_id, body) "
                    "SELECT :t, 'note ' || g FROM generate_series(1, :n) g"
                ),
                {"t": tenant, "n": count},
            )
        for tenant in INT_TENANTS:
            conn.execute(
                text("INSERT INTO int_notes (tenant_id, body) VALUES (:t, 'int note')"), {"t": tenant}
            )
    engine.dispose()
    yield pgtenancy_database
