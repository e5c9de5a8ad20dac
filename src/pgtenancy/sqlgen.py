"""Plain SQL of the migration operations, for projects that do not use Alembic.

The text is compiled from the same ``pgtenancy.ddl`` constructs the Alembic operations run, for
PostgreSQL, with a ``;`` after each statement: paste it into a migration tool or run it with psql.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import DDLElement

from pgtenancy import ddl, seal_sql
from pgtenancy.config import DEFAULT_SETTING
from pgtenancy.seal import DEFAULT_SEAL_SETTING

__all__ = [
    "render_create_role_sql",
    "render_disable_sql",
    "render_enable_sql",
    "render_grant_sql",
    "render_hide_activity_sql",
    "render_revoke_temporary_sql",
    "render_seal_schema_sql",
    "render_seal_sql",
    "render_sql",
]

# no driver placeholders: '%' stays '%'
_DIALECT = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]


def render_sql(statements: Iterable[DDLElement]) -> str:
    """Each statement compiled for PostgreSQL and terminated by ``;``, one after the other."""
    return "".join(str(statement.compile(dialect=_DIALECT)) + ";\n" for statement in statements)


def render_enable_sql(
    table: str,
    column: str = "tenant_id",
    schema: str | None = None,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    citus: bool = False,
) -> str:
    """The SQL of ``op.enable_tenant_isolation``: ENABLE + FORCE RLS, the tenant policy, a tenant index."""
    return render_sql(
        ddl.enable_statements(table, column, schema, key_type=key_type, setting=setting, citus=citus)
    )


def render_disable_sql(
    table: str,
    column: str = "tenant_id",
    schema: str | None = None,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    citus: bool = False,
) -> str:
    """The SQL of ``op.disable_tenant_isolation``: the exact reverse of ``render_enable_sql``."""
    return render_sql(
        ddl.disable_statements(table, column, schema, key_type=key_type, setting=setting, citus=citus)
    )


def render_create_role_sql(name: str, *, login: bool = True, password: str | None = None) -> str:
    """The SQL of ``op.create_tenant_role``: a NOSUPERUSER NOBYPASSRLS role, created unless it exists."""
    return render_sql(ddl.create_role_statements(name, login=login, password=password))


def render_grant_sql(role: str, table: str, schema: str | None = None) -> str:
    """The SQL of ``op.grant_tenant_access``: DML, sequence USAGE; TRUNCATE, REFERENCES, TRIGGER revoked."""
    return render_sql(ddl.grant_statements(role, table, schema))


def render_revoke_temporary_sql(role: str) -> str:
    """The SQL of ``op.revoke_temporary_tables``: ``role`` (and PUBLIC) may not create temporary tables."""
    return render_sql(ddl.temporary_statements(role, allow=False))


def render_seal_schema_sql(
    schema: str = seal_sql.DEFAULT_SEAL_SCHEMA,
    setting: str = DEFAULT_SETTING,
    seal_setting: str = DEFAULT_SEAL_SETTING,
) -> str:
    """The SQL of ``op.create_tenant_seal``, and how to add a key without writing it into a file."""
    statements = seal_sql.create_seal_statements(schema, setting=setting, seal_setting=seal_setting)
    return (
        render_sql(statements)
        + "-- add a key (hex, 32 bytes or more) without writing it into a file, e.g. in psql:\n"
        + seal_sql.add_key_note(schema)
    )


def render_seal_sql(
    table: str,
    column: str = "tenant_id",
    schema: str | None = None,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    *,
    sealed: bool = True,
    seal_schema: str = seal_sql.DEFAULT_SEAL_SCHEMA,
) -> str:
    """The SQL of ``op.seal_tenant_isolation`` (``sealed``) or ``op.unseal_tenant_isolation``."""
    return render_sql(
        seal_sql.policy_statements(
            table, column, schema, key_type=key_type, sealed=sealed, seal_schema=seal_schema, setting=setting
        )
    )


def render_hide_activity_sql(role: str) -> str:
    """The SQL of ``op.hide_tenant_activity`` (run it as a superuser)."""
    return render_sql(seal_sql.activity_statements(ddl.validate_role_name(role), hidden=True))
