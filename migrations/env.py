"""Alembic environment of the example application (async, as in Alembic's cookbook).

The database URL comes from ``config.attributes["url"]`` (set by
``pgtenancy.example.migrate.migrations_config``), ``$PGTENANCY_DATABASE_URL`` or ``sqlalchemy.url``; use an
async driver (``postgresql+asyncpg://`` or ``postgresql+psycopg://``). Run it as the schema owner;
the first revision also creates the app role, which needs a migration role with CREATEROLE. The app role
(``-x app_role=NAME``, ``$PGTENANCY_APP_ROLE``, default ``pgtenancy_app``) is the one the first revision
creates and the one autogenerate proposes ``grant_tenant_access`` for on new tenant tables.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import URL, Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

import pgtenancy.alembic  # noqa: F401 - registers pgtenancy's operations, renderers and comparator
from pgtenancy.example.models import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

target_metadata = metadata


def database_url() -> str | URL:
    """The URL given in code, else ``$PGTENANCY_DATABASE_URL``, else ``sqlalchemy.url`` from the ini file."""
    url = (
        config.attributes.get("url")
        or os.environ.get("PGTENANCY_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("set PGTENANCY_DATABASE_URL (or sqlalchemy.url) to the database to migrate")
    return url


def app_role() -> str:
    """The app role: ``-x app_role=NAME``, else ``$PGTENANCY_APP_ROLE``, else ``pgtenancy_app``."""
    given = context.get_x_argument(as_dictionary=True).get("app_role")
    return given or os.environ.get("PGTENANCY_APP_ROLE") or "pgtenancy_app"


def run_migrations_offline() -> None:
    """Write the migrations as SQL (``alembic upgrade --sql``) without connecting."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        pgtenancy_app_roles=[app_role()],  # autogenerate proposes grant_tenant_access for this role
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Run the migrations on one connection of a throw-away async engine."""
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
