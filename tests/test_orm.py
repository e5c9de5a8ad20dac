"""TenantMixin and tenant_column: the tenant column first, one index, and docs/models.md's relationships."""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    Identity,
    PrimaryKeyConstraint,
    UniqueConstraint,
    create_engine,
    exc,
    inspect,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, configure_mappers, mapped_column, sessionmaker

from pgtenancy import TenantMixin, instrument, tenant_column, tenant_context
from pgtenancy.ddl import enable_statements, grant_statements
from pgtenancy.testing import TestDatabase

MODELS_DOC = Path(__file__).resolve().parent.parent / "docs" / "models.md"
A, B = uuid.UUID(int=0x0A), uuid.UUID(int=0x0B)


class Base(DeclarativeBase):
    pass


class KeyedByTenant(TenantMixin, Base):
    __tablename__ = "keyed_by_tenant"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "id"),)
    id: Mapped[int] = mapped_column(Identity())


class UniqueByTenant(TenantMixin, Base):
    __tablename__ = "unique_by_tenant"
    __table_args__ = (UniqueConstraint("tenant_id", "code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str]


class KeyedById(TenantMixin, Base):
    __tablename__ = "keyed_by_id"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class OwnColumn(Base):
    __tablename__ = "own_column"
    id: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[int] = tenant_column(key_type="int", index=False)


def index_columns(model: Any) -> list[list[str]]:
    return sorted([column.name for column in index.columns] for index in model.__table__.indexes)


def test_the_tenant_column_comes_first_whatever_the_model_declares() -> None:
    for model in (KeyedByTenant, UniqueByTenant, KeyedById):
        assert model.__table__.c.keys()[0] == "tenant_id"
    assert OwnColumn.__table__.c.keys() == ["account", "id"]


def test_no_index_duplicates_a_key_leading_with_the_tenant_column() -> None:
    assert index_columns(KeyedByTenant) == []
    assert index_columns(UniqueByTenant) == []
    assert index_columns(KeyedById) == [["tenant_id"]]
    assert [index.name for index in KeyedById.__table__.indexes] == ["ix_keyed_by_id_tenant_id"]
    assert index_columns(OwnColumn) == []  # index=False is obeyed


def models_block() -> str:
    """The first Python block of docs/models.md, its relationships (the SQLModel block is a pytest module)."""
    return re.findall(r"```python\n(.*?)```", MODELS_DOC.read_text(), re.S)[0]


@pytest.fixture(scope="module")
def documented(pgtenancy_database: TestDatabase) -> Iterator[dict[str, Any]]:
    """docs/models.md's models, mapped with SQLAlchemy warnings as errors, created and isolated."""
    namespace: dict[str, Any] = {"__name__": "models_doc"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", exc.SAWarning)
        exec(compile(models_block(), str(MODELS_DOC), "exec", dont_inherit=True), namespace)  # noqa: S102 - our own docs
        configure_mappers()
    metadata = namespace["Base"].metadata
    owner = create_engine(pgtenancy_database.url("owner"))
    with owner.begin() as conn:
        metadata.create_all(conn)
        for table in metadata.sorted_tables:
            for statement in [
                *enable_statements(table.name),
                *grant_statements(pgtenancy_database.roles.app, table.name),
            ]:
                conn.execute(statement)
    owner.dispose()
    yield namespace


@pytest.fixture
def sessions(pgtenancy_database: TestDatabase) -> Iterator[sessionmaker[Session]]:
    engine: Engine = create_engine(pgtenancy_database.url("app"))
    yield instrument(sessionmaker(engine))
    engine.dispose()


def test_documented_relationships_write_and_read_each_tenants_graph(
    documented: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    Project, Member, Task = documented["Project"], documented["Member"], documented["Task"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", exc.SAWarning)
        for tenant in (A, B):
            with tenant_context(tenant), sessions.begin() as session:
                ada = Member(name="ada " + str(tenant))
                project = Project(name="launch")
                project.tasks.append(Task(title="plan", assignee=ada))
                project.tasks.append(Task(title="ship"))
                session.add(project)
        with tenant_context(A), sessions.begin() as session:
            task = session.scalars(select(Task).where(Task.title == "plan")).one()
            assert (task.project.name, task.assignee.name) == ("launch", "ada " + str(A))
            task.assignee = None  # clears assignee_id only; the shared tenant_id stays
        with tenant_context(A), sessions() as session:
            rows = session.execute(
                select(Task.tenant_id, Task.title, Task.assignee_id).order_by(Task.title)
            ).all()
            projects = session.scalars(select(Project)).all()
            assert [(t, title, assignee) for t, title, assignee in rows] == [
                (A, "plan", None),
                (A, "ship", None),
            ]
            assert [sorted(task.title for task in project.tasks) for project in projects] == [
                ["plan", "ship"]
            ]


def test_documented_tables_keep_the_tenant_in_their_keys(
    documented: dict[str, Any], pgtenancy_database: TestDatabase
) -> None:
    engine = create_engine(pgtenancy_database.url("owner"))
    with engine.connect() as conn:
        found = inspect(conn)
        for table in ("projects", "members", "tasks"):
            assert found.get_columns(table)[0]["name"] == "tenant_id"
            assert found.get_pk_constraint(table)["constrained_columns"] == ["tenant_id", "id"]
            assert found.get_indexes(table) == []  # the primary key serves the policy
        keys = sorted(key["constrained_columns"] for key in found.get_foreign_keys("tasks"))
    engine.dispose()
    assert keys == [["tenant_id", "assignee_id"], ["tenant_id", "project_id"]]


def test_without_the_documented_joins_sqlalchemy_warns_that_the_relationships_conflict() -> None:
    naive = re.sub(r", primaryjoin=\w+_JOIN", "", models_block())
    assert naive != models_block()
    namespace: dict[str, Any] = {"__name__": "models_doc_naive"}
    exec(compile(naive, "naive models", "exec", dont_inherit=True), namespace)  # noqa: S102 - our own docs
    with pytest.warns(exc.SAWarning, match="conflicts with relationship"):
        namespace["Base"].registry.configure()
