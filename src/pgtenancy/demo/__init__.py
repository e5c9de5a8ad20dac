"""``pgtenancy demo``: a real PostgreSQL, two tenants, and a query that forgot its tenant filter."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from pgtenancy import NoTenantError, instrument, tenant_context
from pgtenancy.testing.database import TestDatabase, TestRoles, clone_database, create_roles, create_template
from pgtenancy.testing.server import start_embedded

__all__ = ["run"]

ACME = uuid.UUID("00000000-0000-4000-8000-00000000ac3e")
GLOBEX = uuid.UUID("00000000-0000-4000-8000-0000000910be")
_POLICY = "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"
_UNFILTERED = text("SELECT tenant_id, body FROM invoices ORDER BY body")  # no WHERE tenant_id = ...


def _schema(conn: Connection, roles: TestRoles) -> None:
    """An invoices table isolated by RLS, as ``op.enable_tenant_isolation`` creates it (constants only)."""
    app = conn.dialect.identifier_preparer.quote(roles.app)
    for statement in (
        "CREATE TABLE invoices (id bigserial, tenant_id uuid NOT NULL DEFAULT "
        "NULLIF(current_setting('app.current_tenant_id', true), '')::uuid, body text NOT NULL, "
        "PRIMARY KEY (tenant_id, id))",
        "ALTER TABLE invoices ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE invoices FORCE ROW LEVEL SECURITY",
        "CREATE POLICY tenant_isolation ON invoices USING (" + _POLICY + ") WITH CHECK (" + _POLICY + ")",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO " + app,
        "GRANT USAGE ON SEQUENCE invoices_id_seq TO " + app,
    ):
        conn.exec_driver_sql(statement)


def _seed(database: TestDatabase) -> None:
    engine = create_engine(database.url("admin"))
    with engine.begin() as conn:
        for tenant, bodies in ((ACME, ["acme invoice 1", "acme invoice 2"]), (GLOBEX, ["globex invoice 1"])):
            for body in bodies:
                conn.execute(
                    text("INSERT INTO invoices (tenant_id, body) VALUES (:t, :b)"), {"t": tenant, "b": body}
                )
    engine.dispose()


async def _walkthrough(database: TestDatabase) -> list[bool]:
    engine = instrument(create_async_engine(database.url("app", drivername="postgresql+asyncpg")))
    checks = []
    try:
        for name, tenant in (("acme", ACME), ("globex", GLOBEX)):
            async with tenant_context(tenant), engine.connect() as conn:
                rows = (await conn.execute(_UNFILTERED)).all()
            print(f"  as {name:<7} all invoices, no tenant filter -> {[r.body for r in rows]}")
            checks.append(bool(rows) and all(r.tenant_id == tenant for r in rows))
        try:
            async with engine.connect() as conn:
                await conn.execute(_UNFILTERED)
            checks.append(False)
        except NoTenantError:
            print("  with no tenant bound         -> NoTenantError before any statement ran")
            checks.append(True)
        try:
            async with tenant_context(ACME), engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO invoices (tenant_id, body) VALUES (:t, 'forged')"), {"t": GLOBEX}
                )
            checks.append(False)
        except DBAPIError:
            print("  acme writing a globex row     -> rejected by the row-level security policy")
            checks.append(True)
    finally:
        await engine.dispose()
    return checks


def run() -> int:
    """Run the walkthrough on a throwaway embedded server; 0 when every step behaved as described."""
    print("Starting an embedded PostgreSQL ...")
    server = start_embedded()
    try:
        roles = create_roles(server, prefix="demo")
        create_template(server, roles, "demo_template", _schema)
        database = clone_database(server, "demo_template", "demo", roles)
        _seed(database)
        print(f"Connected as {roles.app!r} (NOSUPERUSER NOBYPASSRLS); invoices is protected by RLS.")
        checks = asyncio.run(_walkthrough(database))
    finally:
        server.stop()
    ok = all(checks)
    print(
        f"{sum(checks)}/{len(checks)} steps behaved as described."
        if ok
        else "Some steps did NOT behave as described."
    )
    return 0 if ok else 1
