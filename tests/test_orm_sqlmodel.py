"""tenant_field: with SQLModel the tenant id is a model field, filled in by the database, isolated by RLS."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, select

from pgtenancy import tenant_context
from pgtenancy.alembic.compare import tenant_spec
from pgtenancy.ddl import enable_statements, grant_statements
from pgtenancy.orm import TENANT_INFO_KEY, tenant_default_sql, tenant_field
from pgtenancy.testing import TestDatabase
from pgtenancy.testing.plugin import EngineFactory

A, B = uuid.UUID(int=0x5A), uuid.UUID(int=0x5B)


class Base(SQLModel, registry=registry()):
    """The tests' own registry and metadata, apart from SQLModel's default ones."""


class TenantOwned(Base):
    """A base model the tables share: its tenant field comes first in each of them."""

    tenant_id: uuid.UUID | None = tenant_field()


class Note(TenantOwned, table=True):
    __tablename__ = "sqlmodel_notes"

    id: int | None = Field(default=None, primary_key=True)
    body: str


class Ticket(Base, table=True):
    __tablename__ = "sqlmodel_tickets"

    tenant_id: int | None = tenant_field(key_type="int", primary_key=True)  # the key is (tenant_id, id)
    id: int | None = Field(default=None, primary_key=True, sa_column_kwargs={"autoincrement": True})
    title: str


def test_the_tenant_id_is_a_validated_field_of_the_model() -> None:
    assert Note(body="hi").model_dump() == {"tenant_id": None, "id": None, "body": "hi"}
    assert Note.model_validate({"tenant_id": str(A), "body": "hi"}).tenant_id == A
    with pytest.raises(ValidationError, match="tenant_id"):
        Note.model_validate({"tenant_id": "not-a-tenant", "body": "hi"})


def test_the_column_follows_the_rules_of_tenant_column() -> None:
    notes, tickets = Note.__table__, Ticket.__table__  # type: ignore[attr-defined]
    for table, key_type in ((notes, "uuid"), (tickets, "int")):
        column = table.c.tenant_id
        assert table.c.keys()[0] == "tenant_id" and not column.nullable
        assert str(column.server_default.arg) == tenant_default_sql(key_type=key_type)
        assert column.info[TENANT_INFO_KEY]["key_type"] == key_type
    assert [[c.name for c in index.columns] for index in notes.indexes] == [["tenant_id"]]
    assert list(tickets.primary_key.columns.keys()) == ["tenant_id", "id"]
    assert tickets.indexes == set()  # the primary key leads with the tenant column: no second index


def test_autogenerate_sees_the_tenant_tables() -> None:
    for table, key_type in ((Note.__table__, "uuid"), (Ticket.__table__, "int")):  # type: ignore[attr-defined]
        spec = tenant_spec(table)
        assert spec is not None and (spec.table, spec.column, spec.key_type) == (
            table.name,
            "tenant_id",
            key_type,
        )


@pytest.fixture(scope="module")
def tables(pgtenancy_database: TestDatabase) -> None:
    """The models' tables, created as the owner, isolated and granted to the app role."""
    owner = create_engine(pgtenancy_database.url("owner"))
    with owner.begin() as conn:
        Base.metadata.create_all(conn)
        for table, key_type in (("sqlmodel_notes", "uuid"), ("sqlmodel_tickets", "int")):
            for statement in [
                *enable_statements(table, key_type=key_type),
                *grant_statements(pgtenancy_database.roles.app, table),
            ]:
                conn.execute(statement)
    owner.dispose()


@pytest.fixture
def app_engine(tables: None, pgtenancy_engine_factory: EngineFactory) -> Engine:
    """An instrumented sync engine as the app role, for uuid tenants (``sqlmodel_notes``)."""
    return pgtenancy_engine_factory("psycopg")


@pytest.fixture
def int_engine(tables: None, pgtenancy_engine_factory: EngineFactory) -> Engine:
    """The same for integer tenants (``sqlmodel_tickets``)."""
    return pgtenancy_engine_factory("psycopg", key_type="int")


def test_an_insert_without_tenant_id_is_written_for_the_bound_tenant(app_engine: Engine) -> None:
    for tenant in (A, B):
        with tenant_context(tenant), Session(app_engine) as session:
            note = Note(body="note of " + str(tenant))
            session.add(note)
            session.commit()
            session.refresh(note)
            assert note.model_dump()["tenant_id"] == tenant
    with tenant_context(A), Session(app_engine) as session:
        assert [(n.tenant_id, n.body) for n in session.exec(select(Note)).all()] == [(A, "note of " + str(A))]


def test_row_level_security_keeps_each_tenant_to_its_own_rows(int_engine: Engine) -> None:
    with tenant_context(1), Session(int_engine) as session:
        session.add(Ticket(title="one's"))
        session.commit()
    with tenant_context(2), Session(int_engine) as session:
        assert session.exec(select(Ticket)).all() == []
        session.add(Ticket(tenant_id=1, title="forged"))  # names another tenant: WITH CHECK refuses it
        with pytest.raises(ProgrammingError, match="row-level security"):
            session.commit()
    with tenant_context(1), Session(int_engine) as session:
        assert [t.model_dump() for t in session.exec(select(Ticket)).all()] == [
            {"tenant_id": 1, "id": 1, "title": "one's"}
        ]


def test_the_database_has_the_tenant_column_first(pgtenancy_database: TestDatabase, tables: None) -> None:
    owner = create_engine(pgtenancy_database.url("owner"))
    with owner.connect() as conn:
        found = inspect(conn)
        assert [c["name"] for c in found.get_columns("sqlmodel_notes")] == ["tenant_id", "id", "body"]
        assert [i["column_names"] for i in found.get_indexes("sqlmodel_notes")] == [["tenant_id"]]
    owner.dispose()
