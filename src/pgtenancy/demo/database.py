"""The demo's database: an embedded server, the example migrations, and two seeded tenants."""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy.pool import NullPool

from pgtenancy.testing.server import TestServer

__all__ = [
    "APP_ROLE",
    "OWNER_ROLE",
    "TENANTS",
    "DemoDatabase",
    "describe",
    "migrate",
    "prepare",
    "project_counts",
    "seed",
]

DATABASE = "pgtenancy_demo"
OWNER_ROLE = "pgtenancy_owner"
APP_ROLE = "pgtenancy_app"
TENANTS = {1: "acme", 2: "globex"}
_PROJECTS = {1: ["Rocket skates", "Giant magnet"], 2: ["Doomsday device"]}


@dataclass(frozen=True)
class DemoDatabase:
    """URLs of the demo database: as the superuser, the schema owner and the least-privileged app role."""

    admin: URL
    owner: URL
    app: URL


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def prepare(server: TestServer) -> DemoDatabase:
    """Create the owner role (it runs the migrations, so it may create the app role) and its database."""
    owner_password, app_password = secrets.token_hex(16), secrets.token_hex(16)
    engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        owner = _quoted(conn, OWNER_ROLE)
        password = conn.execute(text("SELECT quote_literal(:p)"), {"p": owner_password}).scalar_one()
        conn.exec_driver_sql(
            "CREATE ROLE " + owner + " LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD " + password
        )
        conn.exec_driver_sql("CREATE DATABASE " + _quoted(conn, DATABASE) + " OWNER " + owner)
    engine.dispose()
    admin = server.url(database=DATABASE)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql("ALTER SCHEMA public OWNER TO " + _quoted(conn, OWNER_ROLE))
    engine.dispose()
    return DemoDatabase(
        admin=admin,
        owner=server.url(database=DATABASE, username=OWNER_ROLE, password=owner_password),
        app=server.url(database=DATABASE, username=APP_ROLE, password=app_password),
    )


def migrate(database: DemoDatabase) -> str:
    """Apply the example migrations as the owner (creating the app role); return Alembic's log."""
    from alembic import command

    from pgtenancy.example.migrate import migrations_config

    out = io.StringIO()
    config = migrations_config(
        database.owner.set(drivername="postgresql+asyncpg"),
        app_role=APP_ROLE,
        app_password=database.app.password,
        stdout=out,
    )
    config.attributes["configure_logger"] = False
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("alembic.runtime.migration")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        asyncio.run(asyncio.to_thread(command.upgrade, config, "head"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out.getvalue()


def seed(database: DemoDatabase) -> None:
    """A plan and a few projects for each tenant, written by the superuser (who bypasses RLS)."""
    engine = create_engine(database.admin, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO plans (id, name, max_projects) VALUES (1, 'starter', 10)"))
        for tenant, names in _PROJECTS.items():
            for name in names:
                conn.execute(
                    text("INSERT INTO projects (tenant_id, name, plan_id) VALUES (:t, :n, 1)"),
                    {"t": tenant, "n": name},
                )
    engine.dispose()


def project_counts(database: DemoDatabase) -> dict[int, int]:
    """Each tenant's number of projects, counted by the superuser (who sees every tenant)."""
    engine = create_engine(database.admin, poolclass=NullPool)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT tenant_id, count(*) FROM projects GROUP BY tenant_id")).all()
    engine.dispose()
    return {tenant: count for tenant, count in rows}


def describe(database: DemoDatabase) -> list[str]:
    """What the migrations left in the catalog: RLS flags, policies, the app role and its grants."""
    from pgtenancy import catalog

    lines = []
    engine = create_engine(database.admin, poolclass=NullPool)
    with engine.connect() as conn:
        for table in ("projects", "tasks", "plans"):
            security = catalog.table_security(conn, table)
            if security is None:
                continue
            rls = ("RLS forced" if security.rls_forced else "RLS on") if security.rls_enabled else "no RLS"
            grants = ", ".join(sorted(catalog.table_privileges(conn, APP_ROLE, table)))
            lines.append(f"table {table}: {rls}; {APP_ROLE} may {grants}")
            for policy in catalog.table_policies(conn, table):
                check = (
                    "(same WITH CHECK)"
                    if policy.with_check == policy.using
                    else f"WITH CHECK {policy.with_check}"
                )
                lines.append(f"  policy {policy.name}: USING {' '.join(str(policy.using).split())} {check}")
        role = catalog.role_info(conn, APP_ROLE)
        if role is not None:
            lines.append(
                f"role {role.name}: superuser={role.superuser} bypassrls={role.bypassrls} login={role.login}"
            )
    engine.dispose()
    return lines
