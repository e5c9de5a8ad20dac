"""Alembic environment of the SaaS example: a sync connection as the schema owner.

The URL is ``config.attributes["url"]`` (given in code), else ``sqlalchemy.url``, else
``$SAAS_MIGRATION_URL``: what the caller names wins over the environment, so a test or an audit that
hands its own database is never migrated elsewhere.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from saas.models import metadata
from sqlalchemy import create_engine, pool

import pgtenancy.alembic  # noqa: F401 - registers pgtenancy's operations, renderers and comparator

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)


def database_url() -> str:
    """The database to migrate, as the schema owner."""
    url = (
        config.attributes.get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("SAAS_MIGRATION_URL")
    )
    if not url:
        raise SystemExit("set SAAS_MIGRATION_URL to the database to migrate, as the schema owner")
    return str(url) if isinstance(url, str) else url.render_as_string(hide_password=False)


if context.is_offline_mode():
    raise SystemExit("the SaaS migrations read the catalog (the roles): run them online")
engine = create_engine(database_url(), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
