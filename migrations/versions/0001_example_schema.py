"""Example schema: tenant tables projects and tasks, shared plans, the app role and its grants.

The app role is named by ``-x app_role=NAME`` or ``$PGTENANCY_APP_ROLE`` (default ``pgtenancy_app``);
its password by ``-x app_password=...`` or ``$PGTENANCY_APP_PASSWORD`` (default: none, no password
login). Creating a role needs a migration role with CREATEROLE; roles are shared by the whole
server, so the downgrade drops it again.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

import pgtenancy.alembic  # noqa: F401 - registers op.enable_tenant_isolation and friends
from pgtenancy.ddl import GrantReadAccess, GrantSchemaUsage, RevokeReadAccess, RevokeSchemaUsage

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = ("projects", "tasks")
TENANT_DEFAULT = sa.text("NULLIF(current_setting('app.current_tenant_id', true), '')::bigint")


def _option(name: str, default: str | None) -> str | None:
    """``-x name=...`` on the alembic command line, else ``$PGTENANCY_<NAME>``, else ``default``."""
    given = context.get_x_argument(as_dictionary=True).get(name)
    return given or os.environ.get("PGTENANCY_" + name.upper(), default)


def app_role() -> str:
    """The name of the role the application connects as."""
    return _option("app_role", "pgtenancy_app") or "pgtenancy_app"


def upgrade() -> None:
    """Create the tables, isolate the tenant tables, create the app role, grant it access, no TEMPORARY."""
    op.create_table(
        "plans",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("max_projects", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("name", name=op.f("uq_plans_name")),
    )
    op.create_table(
        "projects",
        sa.Column("tenant_id", sa.BigInteger(), server_default=TENANT_DEFAULT, nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("plan_id", sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_projects_plan_id_plans")),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_projects")),
    )
    op.create_table(
        "tasks",
        sa.Column("tenant_id", sa.BigInteger(), server_default=TENANT_DEFAULT, nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("project_id", sa.BigInteger(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("done", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "project_id"],
            ["projects.tenant_id", "projects.id"],
            name=op.f("fk_tasks_tenant_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_tasks")),
    )
    for table in TENANT_TABLES:
        op.enable_tenant_isolation(table, key_type="int")

    role = app_role()
    op.create_tenant_role(role, password=_option("app_password", None))
    op.execute(GrantSchemaUsage(role, "public"))
    op.execute(GrantReadAccess(role, "plans"))
    for table in TENANT_TABLES:
        op.grant_tenant_access(role, table)
    op.revoke_temporary_tables(role)  # temporary tables have no row-level security


def downgrade() -> None:
    """Revoke the grants, drop the app role, lift the isolation and drop the tables."""
    role = app_role()
    op.grant_temporary_tables(role)
    for table in reversed(TENANT_TABLES):
        op.revoke_tenant_access(role, table)
    op.execute(RevokeReadAccess(role, "plans"))
    op.execute(RevokeSchemaUsage(role, "public"))
    op.drop_tenant_role(role)
    for table in reversed(TENANT_TABLES):
        op.disable_tenant_isolation(table, key_type="int")
    op.drop_table("tasks")
    op.drop_table("projects")
    op.drop_table("plans")
