"""The scale-out test schema: a ``notes`` table distributed by its tenant column, under RLS."""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Connection, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgtenancy import TenantMixin
from pgtenancy.citus import create_distributed_table
from pgtenancy.testing import TestRoles

SCHEMA = "tenancy"
TENANTS = [uuid.UUID(int=0xC000 + n) for n in range(5)]
ROWS_PER_TENANT = dict(zip(TENANTS, (1000, 300, 200, 100, 50), strict=True))
SHARD_COUNT = 32  # Citus' default citus.shard_count

# The form Citus accepts on a distributed table: no scalar subquery around current_setting().
UNWRAPPED = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"
WRAPPED = "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"


class Base(DeclarativeBase):
    pass


class Note(TenantMixin, Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    body: Mapped[str] = mapped_column(Text)


def isolated_table(conn: Connection, roles: TestRoles, table: str) -> None:
    """Test-only DDL with trusted constants: a tenant table, distributed, then put under RLS."""
    default = "NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"
    conn.exec_driver_sql(
        f"CREATE TABLE {table} (id bigserial, tenant_id uuid NOT NULL DEFAULT {default}, "
        f"body text NOT NULL, PRIMARY KEY (tenant_id, id))"
    )
    create_distributed_table(conn, table, "tenant_id")
    conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    conn.exec_driver_sql(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    conn.exec_driver_sql(
        f"CREATE POLICY tenant_isolation ON {table} USING ({UNWRAPPED}) WITH CHECK ({UNWRAPPED})"
    )
    conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {roles.app}")
    conn.exec_driver_sql(f"GRANT USAGE ON SEQUENCE {table}_id_seq TO {roles.app}")


def seed(conn: Connection, table: str = "notes") -> None:
    """ROWS_PER_TENANT rows per tenant (run as the superuser, which RLS does not bind)."""
    for tenant, count in ROWS_PER_TENANT.items():
        conn.execute(
            text(
                f"INSERT INTO {table} (tenant_id, body) SELECT :t, 'note ' || g FROM generate_series(1, :n) g"
            ),
            {"t": tenant, "n": count},
        )
