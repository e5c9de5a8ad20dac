"""Schema: shared tenants and users, the tenant tables, their isolation and grants, the narrow functions.

The app role holds no privilege on ``tenants`` and ``users``: it reaches them only through two SECURITY
DEFINER functions owned by the schema owner (who does not bypass row-level security):

- ``sign_up(organization, owner_id, owner_email)`` creates a tenant with a fresh id, the user if new and
  the user's ``owner`` membership, and returns the tenant's id. It cannot touch an existing tenant: the id
  is made inside, and the membership insert passes row-level security only for the tenant it binds, for
  its own insert, and gives the caller's value back before it returns.
- ``current_tenant()`` returns the row of the tenant bound to the transaction, and nothing without one.

The admin role reads every table (it bypasses row-level security) and writes none.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:00:01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from saas.migration_roles import admin_role, app_role

from pgtenancy.alembic import (
    disable_tenant_isolation,
    enable_tenant_isolation,
    grant_tenant_access,
    revoke_tenant_access,
)
from pgtenancy.ddl import GrantReadAccess, RevokeReadAccess
from pgtenancy.orm import tenant_default_sql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARED_TABLES = ("tenants", "users")
TENANT_TABLES = ("memberships", "projects", "tasks", "comments")
FUNCTIONS = ("sign_up(text, uuid, text)", "current_tenant()")

SIGN_UP = """
CREATE FUNCTION sign_up(organization text, owner_id uuid, owner_email text) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    tenant uuid := gen_random_uuid();
    caller text := current_setting('app.current_tenant_id', true);
BEGIN
    IF length(btrim(organization)) IS NULL OR length(btrim(organization)) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'an organization needs a name of 1 to 200 characters'
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO public.tenants (id, name) VALUES (tenant, btrim(organization));
    INSERT INTO public.users (id, email) VALUES (owner_id, lower(owner_email)) ON CONFLICT (id) DO NOTHING;
    -- a membership is a tenant row: bind the new tenant for this insert only, then the caller's again
    -- (if the insert fails, the rollback of the transaction or savepoint restores it)
    PERFORM set_config('app.current_tenant_id', tenant::text, true);
    INSERT INTO public.memberships (tenant_id, user_id, role) VALUES (tenant, owner_id, 'owner');
    PERFORM set_config('app.current_tenant_id', coalesce(caller, ''), true);
    RETURN tenant;
END
$$
"""

CURRENT_TENANT = """
CREATE FUNCTION current_tenant() RETURNS TABLE (id uuid, name text, created_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT t.id, t.name, t.created_at FROM public.tenants t
     WHERE t.id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)
$$
"""


def _tenant_id() -> sa.Column[object]:
    """The tenant column: first, NOT NULL, defaulting to the tenant bound to the transaction."""
    return sa.Column("tenant_id", sa.Uuid(), server_default=sa.text(tenant_default_sql()), nullable=False)


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _grant_functions() -> None:
    """Only the app role may execute the functions (PostgreSQL grants EXECUTE to PUBLIC by default)."""
    app = op.get_bind().dialect.identifier_preparer.quote(app_role())
    for function in FUNCTIONS:
        op.execute("REVOKE ALL ON FUNCTION " + function + " FROM PUBLIC")
        op.execute("GRANT EXECUTE ON FUNCTION " + function + " TO " + app)


def upgrade() -> None:
    """Create the tables, isolate the tenant tables, grant the roles, create the functions."""
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), server_default=sa.func.gen_random_uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "memberships",
        _tenant_id(),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name=op.f("ck_memberships_role")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_memberships_user_id_users")),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name=op.f("pk_memberships")),
    )
    op.create_table(
        "projects",
        _tenant_id(),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_projects")),
    )
    op.create_table(
        "tasks",
        _tenant_id(),
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
    op.create_table(
        "comments",
        _tenant_id(),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("author_id", sa.Uuid(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "task_id"],
            ["tasks.tenant_id", "tasks.id"],
            name=op.f("fk_comments_tenant_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "author_id"],
            ["memberships.tenant_id", "memberships.user_id"],
            name=op.f("fk_comments_tenant_id_memberships"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "id", name=op.f("pk_comments")),
    )
    for table in TENANT_TABLES:
        enable_tenant_isolation(table)  # ENABLE + FORCE RLS, the tenant policy
        grant_tenant_access(app_role(), table)  # DML; TRUNCATE, REFERENCES, TRIGGER revoked
    for table in SHARED_TABLES + TENANT_TABLES:
        op.execute(GrantReadAccess(admin_role(), table))
    op.execute(SIGN_UP)
    op.execute(CURRENT_TENANT)
    _grant_functions()


def downgrade() -> None:
    """Drop the functions (and their grants), revoke the grants, lift the isolation and drop the tables."""
    op.execute("DROP FUNCTION current_tenant()")
    op.execute("DROP FUNCTION sign_up(text, uuid, text)")
    for table in reversed(SHARED_TABLES + TENANT_TABLES):
        op.execute(RevokeReadAccess(admin_role(), table))
    for table in reversed(TENANT_TABLES):
        revoke_tenant_access(app_role(), table)
        disable_tenant_isolation(table)
    for table in ("comments", "tasks", "projects", "memberships", "users", "tenants"):
        op.drop_table(table)
