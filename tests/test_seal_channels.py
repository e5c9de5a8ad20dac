"""Where a seal could be copied from, measured with an attacker connection as the app role.

A seal travels in a ``SET LOCAL`` statement; two server views keep statement text the app role can read:
``pg_stat_activity`` (other sessions of the same role, their last statement) and ``pg_stat_statements``
(utility statements with their constants, on PostgreSQL 15). Each test shows the channel open with the
defaults, then closed by ``op.hide_tenant_activity(app)``. A copied seal names the backend it was made
for, so it is useless elsewhere (tests/test_seal.py); these channels matter for a later transaction on
that same pooled backend, within the seal's lifetime.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

import pgtenancy.alembic  # noqa: F401 (registers the operations)
from pgtenancy import instrument, tenant_context
from pgtenancy.seal import Seal
from pgtenancy.testing import TestDatabase
from tests.seal_support import seal_table, statements_database

B = uuid.UUID(int=0x5EA1B)
KEY = secrets.token_bytes(32)
HARVEST = text(
    "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE '%pgtenancy.seal%'"
)


def set_activity(database: TestDatabase, *, hidden: bool) -> None:
    """``op.hide_tenant_activity`` (or its reverse) for the app role, as the superuser runs it."""
    admin = create_engine(database.url("admin"), poolclass=NullPool)
    try:
        with admin.begin() as conn:
            op = Operations(MigrationContext.configure(conn))
            if hidden:
                op.hide_tenant_activity(database.roles.app)
            else:
                op.show_tenant_activity(database.roles.app)
    finally:
        admin.dispose()


def victim(database: TestDatabase) -> Engine:
    return instrument(create_engine(database.url("app"), pool_size=2), seal=Seal(KEY, key_id="k1"))


def run_transactions(engine: Engine, count: int, stop: threading.Event) -> None:
    for _ in range(count):
        if stop.is_set():
            return
        with tenant_context(B), engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM docs")).scalar()


def harvest_activity(database: TestDatabase, transactions: int) -> list[str]:
    """Seals an app-role attacker reads in ``pg_stat_activity`` while a victim runs ``transactions``."""
    engine, stop, found = victim(database), threading.Event(), []
    worker = threading.Thread(target=run_transactions, args=(engine, transactions, stop))
    attacker = create_engine(database.url("app"), poolclass=NullPool)
    try:
        with attacker.connect() as conn:
            worker.start()
            while worker.is_alive() and not found:
                found = list(conn.execute(HARVEST).scalars())
                conn.rollback()  # a new snapshot of the statistics each time
    finally:
        stop.set()
        worker.join()
        engine.dispose()
        attacker.dispose()
    return found


@pytest.fixture(scope="module")
def sealed(pgtenancy_database: TestDatabase) -> TestDatabase:
    seal_table(pgtenancy_database, KEY)
    return pgtenancy_database


def test_pg_stat_activity_shows_seals_until_the_app_role_is_hidden(sealed: TestDatabase):
    found = harvest_activity(sealed, 3000)
    assert found and "SET LOCAL pgtenancy.seal" in found[0]  # the channel, open by default
    set_activity(sealed, hidden=True)
    try:
        assert harvest_activity(sealed, 300) == []  # the role's new sessions report no statement text
    finally:
        set_activity(sealed, hidden=False)


@pytest.fixture(scope="module")
def statements_server() -> Iterator[TestDatabase]:
    """A server of its own with pg_stat_statements loaded, the docs table sealed."""
    with statements_database("pgt_pss") as database:
        seal_table(database, KEY)
        yield database


def harvest_statements(database: TestDatabase) -> list[str]:
    """Seals an app-role attacker reads in ``pg_stat_statements`` after a victim's transactions."""
    admin = create_engine(database.url("admin"), poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_stat_statements_reset()"))
        conn.commit()
    admin.dispose()
    engine = victim(database)
    run_transactions(engine, 5, threading.Event())
    engine.dispose()
    time.sleep(0.1)  # let the statistics reach the shared hash table
    attacker = create_engine(database.url("app"), poolclass=NullPool)
    with attacker.connect() as conn:
        found = list(
            conn.execute(
                text("SELECT query FROM pg_stat_statements WHERE query LIKE '%pgtenancy.seal%'")
            ).scalars()
        )
    attacker.dispose()
    return found


def test_pg_stat_statements_keeps_seals_until_the_app_role_is_hidden(statements_server: TestDatabase):
    found = harvest_statements(statements_server)
    assert found, "this pg_stat_statements no longer keeps SET constants: update docs/security.md"
    assert any(len(query.split("'")[1].split(":")[2]) == 64 for query in found)  # a whole signature
    set_activity(statements_server, hidden=True)
    assert harvest_statements(statements_server) == []
