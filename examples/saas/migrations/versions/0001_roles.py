"""Roles: the schema owner runs these migrations, the app role serves tenants, the admin role reads reports.

- owner: the role the migrations run as. It owns every table and the SECURITY DEFINER functions of 0002,
  so it must not bypass row-level security: FORCE ROW LEVEL SECURITY then binds it too, and those
  functions cannot reach past the tenant they bind. It needs CREATEROLE to create the app role here
  (or the app role exists already, which this revision accepts).
- app (``-x app_role``, ``$SAAS_APP_ROLE``, default ``saas_app``): created NOSUPERUSER NOBYPASSRLS with
  its password read from ``$SAAS_APP_PASSWORD`` when the migration runs; no temporary tables.
- admin (``-x admin_role``, ``$SAAS_ADMIN_ROLE``, default ``saas_admin``): BYPASSRLS, which only a
  superuser can grant, so it is created beforehand (``CREATE ROLE saas_admin LOGIN BYPASSRLS``); this
  revision checks it and gives it the schema. The app role is never made a member of it.

Revision ID: 0001
Revises:
Create Date: 2026-12-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from saas.migration_roles import admin_role, app_role

from pgtenancy.alembic import (
    create_tenant_role,
    drop_tenant_role,
    grant_temporary_tables,
    revoke_temporary_tables,
)
from pgtenancy.ddl import GrantSchemaUsage, RevokeSchemaUsage

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PASSWORD_VARIABLE = "SAAS_APP_PASSWORD"  # noqa: S105 - the variable's name; its value is read at run time
_ROLE = sa.text("SELECT rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = :name")


def _check_roles() -> None:
    """Refuse an owner that bypasses row-level security, and a missing or unfit admin role."""
    bind = op.get_bind()
    owner = bind.execute(sa.text("SELECT current_user")).scalar_one()
    owner_flags = bind.execute(_ROLE, {"name": owner}).one()
    if owner_flags.rolsuper or owner_flags.rolbypassrls:
        raise RuntimeError(
            f"run the migrations as the schema owner, a role that does not bypass row-level security "
            f"(not {owner!r}): the SECURITY DEFINER functions run as it"
        )
    admin = bind.execute(_ROLE, {"name": admin_role()}).first()
    if admin is None or admin.rolsuper or not admin.rolbypassrls:
        raise RuntimeError(
            f"the admin role {admin_role()!r} must exist, with BYPASSRLS and without SUPERUSER: "
            "have a superuser create it first (CREATE ROLE ... LOGIN BYPASSRLS PASSWORD ...)"
        )


def upgrade() -> None:
    """Check the owner and the admin role, create the app role, give both the schema, no TEMPORARY."""
    _check_roles()
    create_tenant_role(app_role(), password_env=PASSWORD_VARIABLE)
    op.execute(GrantSchemaUsage(app_role(), "public"))
    op.execute(GrantSchemaUsage(admin_role(), "public"))
    revoke_temporary_tables(app_role())  # temporary tables have no row-level security


def downgrade() -> None:
    """Give TEMPORARY back, take the schema from both roles, drop the app role."""
    grant_temporary_tables(app_role())
    op.execute(RevokeSchemaUsage(admin_role(), "public"))
    op.execute(RevokeSchemaUsage(app_role(), "public"))
    drop_tenant_role(app_role(), password_env=PASSWORD_VARIABLE)
