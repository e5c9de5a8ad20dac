"""Helpers shared by the migration tests: empty databases, Alembic configs and offline SQL runs."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.config import Config
from sqlalchemy import URL, create_engine
from sqlalchemy.pool import NullPool

from pgtenancy.example.migrate import MIGRATIONS
from pgtenancy.testing import TestDatabase, TestRoles, TestServer
from pgtenancy.testing.database import create_template, drop_database


@contextmanager
def empty_database(server: TestServer, roles: TestRoles) -> Iterator[TestDatabase]:
    """A database with an empty ``public`` schema owned by the owner role (the app role may use it)."""
    name = "pgt_mig_" + secrets.token_hex(4)
    create_template(server, roles, name)
    try:
        yield TestDatabase(name=name, server=server, roles=roles)
    finally:
        drop_database(server, name)


def alembic_config(
    monkeypatch: pytest.MonkeyPatch, url: URL, script_location: Path = MIGRATIONS
) -> tuple[Config, io.StringIO]:
    """An Alembic config for ``script_location`` on ``url``; its output (``--sql``...) goes to a buffer."""
    monkeypatch.setenv("PGTENANCY_DATABASE_URL", url.render_as_string(hide_password=False))
    buffer = io.StringIO()
    config = Config(stdout=buffer, output_buffer=buffer)
    config.set_main_option("script_location", str(script_location))
    return config, buffer


def run_sql_script(url: URL, script: str) -> None:
    """Run a multi-statement SQL script (offline ``--sql`` output, with its own BEGIN/COMMIT) as given."""
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(script)
    finally:
        engine.dispose()
