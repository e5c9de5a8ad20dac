"""enable_tenant_criteria: the bound tenant's predicate lets Citus route an ORM query to one shard."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, aliased, sessionmaker

from pgtenancy import ConfigurationError, tenant_context, without_tenant
from pgtenancy.pruning import disable_tenant_criteria, enable_tenant_criteria, tenant_criteria_enabled
from tests.scaleout.schema import ROWS_PER_TENANT, SHARD_COUNT, TENANTS, Note

A, B = TENANTS[0], TENANTS[1]


class Statements:
    """The SQL an engine sends, so a test can EXPLAIN exactly what the ORM emitted."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[tuple[str, object]] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            self.sent.append((statement, parameters))

    def task_count(self, session: Session) -> int:
        """Citus' task count for the last statement sent: 1 when routed to one shard."""
        statement, parameters = self.sent[-1]
        plan = session.connection().exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
        return int(re.search(r"Task Count: (\d+)", "\n".join(plan)).group(1))


@pytest.fixture
def engine(citus_app):
    return citus_app.engine("psycopg", mode="set_local")


@pytest.fixture
def a_note_id(citus_app):
    with citus_app.admin().connect() as conn:
        return conn.scalar(text("SELECT min(id) FROM notes WHERE tenant_id = :t"), {"t": A})


def test_a_point_select_goes_to_one_shard_with_the_criteria_and_to_all_without(engine, a_note_id):
    sent = Statements(engine)
    with tenant_context(A):
        with sessionmaker(engine)() as session:
            plain = session.scalars(select(Note).where(Note.id == a_note_id)).one()
            fanned_out = sent.task_count(session)
        with enable_tenant_criteria(sessionmaker(engine))() as session:
            pruned = session.scalars(select(Note).where(Note.id == a_note_id)).one()
            routed = sent.task_count(session)
    assert (plain.id, plain.tenant_id) == (pruned.id, pruned.tenant_id) == (a_note_id, A)
    assert (fanned_out, routed) == (SHARD_COUNT, 1)
    assert "tenant_id" in sent.sent[-1][0] and "tenant_id" not in sent.sent[0][0].split("WHERE")[1]


def test_counts_aliases_and_bulk_updates_are_routed_too(engine, a_note_id):
    sent = Statements(engine)
    factory = enable_tenant_criteria(sessionmaker(engine))
    other = aliased(Note)
    with tenant_context(B), factory() as session:
        count = session.scalar(select(func.count()).select_from(Note))
        assert sent.task_count(session) == 1
        aliased_ids = session.scalars(select(other.id).where(other.body == "note 1")).all()
        assert sent.task_count(session) == 1
        updated = session.execute(update(Note).where(Note.id == a_note_id).values(body="moved"))
        assert sent.task_count(session) == 1
        session.rollback()
    assert count == ROWS_PER_TENANT[B]
    assert len(aliased_ids) == 1
    assert updated.rowcount == 0  # A's row is not B's: RLS and the predicate agree


def test_nothing_is_added_without_a_tenant(engine):
    sent = Statements(engine)
    factory = enable_tenant_criteria(sessionmaker(engine))
    with without_tenant(), factory() as session:
        assert session.scalars(select(Note)).all() == []
    assert "tenant_id =" not in sent.sent[-1][0]


async def test_async_sessions_get_the_criteria_and_other_factories_do_not(citus_app):
    engine = citus_app.engine("asyncpg", mode="set_local")
    sent = Statements(engine.sync_engine)
    factory = enable_tenant_criteria(async_sessionmaker(engine))
    untouched = async_sessionmaker(engine)
    async with tenant_context(A):
        async with factory() as session:
            assert await session.scalar(select(func.count()).select_from(Note)) == ROWS_PER_TENANT[A]
        with_criteria = sent.sent[-1][0]
        async with untouched() as session:
            assert await session.scalar(select(func.count()).select_from(Note)) == ROWS_PER_TENANT[A]
        without_criteria = sent.sent[-1][0]
    await engine.dispose()
    assert "tenant_id =" in with_criteria and "tenant_id =" not in without_criteria
    assert tenant_criteria_enabled(factory) and not tenant_criteria_enabled(untouched)


def test_enabling_is_idempotent_and_can_be_undone(engine):
    factory = sessionmaker(engine)
    assert enable_tenant_criteria(enable_tenant_criteria(factory)) is factory
    assert tenant_criteria_enabled(factory)
    disable_tenant_criteria(factory)
    assert not tenant_criteria_enabled(factory)
    sent = Statements(engine)
    with tenant_context(A), factory() as session:
        session.scalars(select(Note.id).limit(1)).all()
    assert "tenant_id =" not in sent.sent[-1][0]


def test_only_session_factories_and_classes_are_accepted(engine):
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        enable_tenant_criteria(engine)
