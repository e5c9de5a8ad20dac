"""The example application's models: two tenant tables with ``(tenant_id, id)`` keys and a shared one.

``projects`` and ``tasks`` belong to a tenant (``bigint`` ids, key type ``"int"``); the foreign key
from a task to its project includes the tenant column, so a row can never point into another
tenant. ``plans`` is a shared reference table without tenancy, readable by every tenant.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    MetaData,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgtenancy.orm import tenant_column

__all__ = ["KEY_TYPE", "Base", "Plan", "Project", "Task", "TenantScoped", "metadata"]

KEY_TYPE = "int"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    """Declarative base of the example application, with its naming conventions."""

    metadata = metadata


class TenantScoped:
    """A tenant table keyed by ``(tenant_id, id)``: the tenant column leads the primary key.

    The primary key index already leads with ``tenant_id``, so the column needs no index of its own.
    """

    tenant_id: Mapped[int] = tenant_column(key_type=KEY_TYPE, primary_key=True, sort_order=-2)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, sort_order=-1)


class Plan(Base):
    """A subscription plan: shared reference data, the same for every tenant (no tenancy)."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text, unique=True)
    max_projects: Mapped[int]


class Project(TenantScoped, Base):
    """A tenant's project."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(Text)
    plan_id: Mapped[int | None] = mapped_column(SmallInteger, ForeignKey("plans.id"))


class Task(TenantScoped, Base):
    """A task of one of the tenant's projects; its foreign key carries the tenant column."""

    __tablename__ = "tasks"
    __table_args__: Any = (
        ForeignKeyConstraint(
            ["tenant_id", "project_id"], ["projects.tenant_id", "projects.id"], ondelete="CASCADE"
        ),
    )

    project_id: Mapped[int] = mapped_column(BigInteger)
    title: Mapped[str] = mapped_column(Text)
    done: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
