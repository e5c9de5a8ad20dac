"""An Alembic config for the example application's migrations (``migrations/`` of a source checkout)."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path
from typing import TextIO

from alembic.config import Config
from sqlalchemy import URL

from pgtenancy.errors import ConfigurationError

__all__ = ["MIGRATIONS", "migrations_config"]

_PACKAGED = Path(__file__).resolve().parent / "migrations"  # where a wheel carries them
MIGRATIONS = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[3] / "migrations"


def migrations_config(
    url: str | URL,
    *,
    app_role: str | None = None,
    app_password: str | None = None,
    stdout: TextIO | None = None,
) -> Config:
    """A config for ``alembic.command.upgrade(config, "head")`` and friends on database ``url``.

    :param url: an async driver URL (``postgresql+asyncpg://`` or ``postgresql+psycopg://``) of a role
        that owns the schema and, because the first revision creates the app role, has CREATEROLE.
    :param app_role: the app role to create and grant (``-x app_role``); default ``pgtenancy_app``.
    :param app_password: its password (``-x app_password``); default none.
    :param stdout: where Alembic writes its output (offline ``--sql`` text included).
    """
    if not (MIGRATIONS / "env.py").is_file():
        raise ConfigurationError(
            f"the example migrations are not at {MIGRATIONS}: run from a source checkout"
        )
    options = {"app_role": app_role, "app_password": app_password}
    x_arguments = [name + "=" + value for name, value in options.items() if value is not None]
    config = Config(cmd_opts=Namespace(x=x_arguments), stdout=stdout or sys.stdout, output_buffer=stdout)
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config
