"""Create invoices, isolated by tenant, and the role the application connects as."""

import os

import sqlalchemy as sa
from alembic import op

import pgtenancy.alembic  # noqa: F401 - registers the operations on `op`
from pgtenancy.orm import tenant_default_sql

revision = "0001"
down_revision = None
APP_ROLE = os.environ.get("APP_ROLE", "invoices_app")


def upgrade():
    op.create_table(
        "invoices",
        sa.Column("tenant_id", sa.Uuid, nullable=False, server_default=sa.text(tenant_default_sql())),
        sa.Column("id", sa.BigInteger, sa.Identity()),
        sa.Column("body", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "id"),
    )
    op.enable_tenant_isolation("invoices")  # ENABLE + FORCE RLS, the policy, an index on tenant_id
    op.create_tenant_role(APP_ROLE, password=os.environ.get("APP_PASSWORD"))  # NOSUPERUSER NOBYPASSRLS
    op.grant_tenant_access(APP_ROLE, "invoices")  # DML + sequences; TRUNCATE, REFERENCES, TRIGGER revoked


def downgrade():
    op.revoke_tenant_access(APP_ROLE, "invoices")
    op.drop_tenant_role(APP_ROLE)
    op.disable_tenant_isolation("invoices")
    op.drop_table("invoices")
