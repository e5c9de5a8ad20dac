"""The schema: shared ``tenants`` and ``users``, tenant tables keyed by ``(tenant_id, id)``.

``tenants`` and ``users`` carry no tenant column: the app role holds no privilege on them and reaches them
only through the SECURITY DEFINER functions of the migrations (sign-up, the bound tenant's own row).
Every other table is a tenant table: its keys and foreign keys include ``tenant_id``, so a row can never
point into another tenant. ``Comment`` is a SQLModel table on the same metadata.
"""

from __future__ import annotations

import datetime
import uuid

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    MetaData,
    PrimaryKeyConstraint,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, registry, relationship
from sqlmodel import Field, SQLModel

from pgtenancy import TenantMixin
from pgtenancy.orm import tenant_field

__all__ = ["ROLES", "Base", "Comment", "Membership", "Project", "SQLModelBase", "Task", "Tenant", "User"]

ROLES = ("owner", "admin", "member")  # what a member may do in its organization, most powerful first

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# same tenant, and only the child's own id column is written by the relationship (see docs/models.md)
PROJECT_JOIN = "and_(Project.tenant_id == Task.tenant_id, Project.id == foreign(Task.project_id))"


class Base(DeclarativeBase):
    """Declarative base of the SQLAlchemy models."""

    metadata = metadata


class SQLModelBase(SQLModel, registry=registry(metadata=metadata)):
    """Base of the SQLModel tables: the same metadata, so keys and migrations span both kinds."""


class Tenant(Base):
    """An organization: shared, not tenant-isolated; the app role cannot read or write it directly."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=func.gen_random_uuid())
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class User(Base):
    """A person, identified by the ``sub`` claim of their access tokens; shared across organizations."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Membership(TenantMixin, Base):
    """A user's role in one organization: a user acts only in organizations it is a member of."""

    __tablename__ = "memberships"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "user_id"),
        CheckConstraint("role IN ('owner', 'admin', 'member')", name="role"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(Text)


class Project(TenantMixin, Base):
    """A project of the organization."""

    __tablename__ = "projects"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity())
    name: Mapped[str] = mapped_column(Text)
    tasks: Mapped[list[Task]] = relationship(back_populates="project", primaryjoin=PROJECT_JOIN)


class Task(TenantMixin, Base):
    """A task of one of the organization's projects."""

    __tablename__ = "tasks"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "id"),
        ForeignKeyConstraint(
            ["tenant_id", "project_id"], ["projects.tenant_id", "projects.id"], ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity())
    project_id: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(Text)
    done: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    project: Mapped[Project] = relationship(back_populates="tasks", primaryjoin=PROJECT_JOIN)


class Comment(SQLModelBase, table=True):
    """A member's comment on a task: a SQLModel table, its ``tenant_id`` a field of the model."""

    __tablename__ = "comments"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "task_id"], ["tasks.tenant_id", "tasks.id"], ondelete="CASCADE"),
        ForeignKeyConstraint(["tenant_id", "author_id"], ["memberships.tenant_id", "memberships.user_id"]),
    )

    tenant_id: uuid.UUID | None = tenant_field(primary_key=True)
    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger, sa_column_args=[Identity()])
    task_id: int = Field(sa_type=BigInteger)
    author_id: uuid.UUID
    body: str = Field(sa_type=Text, min_length=1, max_length=10_000)
