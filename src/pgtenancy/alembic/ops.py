"""Alembic operations for tenant isolation, roles and grants: state objects, their SQL and typed calls.

Each operation is a plain object with ``reverse()``; the same object is run, rendered into a revision
file and reversed. Its SQL comes from ``pgtenancy.ddl``. Online, each operation first checks the live
catalog and raises ``SchemaMismatchError`` before any DDL runs when the table, column or role does not
fit; offline (``alembic upgrade --sql``) it writes the same idempotent statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alembic import op as _alembic_op
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Connection

from pgtenancy import ddl
from pgtenancy.catalog import SchemaMismatchError, column_type, role_info, table_security
from pgtenancy.config import DEFAULT_SETTING, sql_type_name, validate_key_type, validate_setting_name

__all__ = [
    "CreateTenantRoleOp",
    "DisableTenantIsolationOp",
    "DropTenantRoleOp",
    "EnableTenantIsolationOp",
    "GrantTenantAccessOp",
    "IsolationSpec",
    "RevokeTenantAccessOp",
    "check_tenant_table",
    "create_tenant_role",
    "disable_tenant_isolation",
    "drop_tenant_role",
    "enable_tenant_isolation",
    "grant_tenant_access",
    "revoke_tenant_access",
]

# The column types a policy comparing with the setting cast to each key type's SQL type can use.
_COLUMN_TYPES = {
    "uuid": frozenset({"uuid"}),
    "int": frozenset({"bigint", "integer", "smallint"}),
    "str": frozenset({"text", "character varying"}),
}


@dataclass(frozen=True, slots=True)
class IsolationSpec:
    """Everything that defines a table's tenant isolation; validated when made."""

    table: str
    column: str = "tenant_id"
    schema: str | None = None
    key_type: str = "uuid"
    setting: str = DEFAULT_SETTING
    citus: bool = False

    def __post_init__(self) -> None:
        ddl.validate_identifier(self.table, "table")
        ddl.validate_identifier(self.column, "column")
        if self.schema is not None:
            ddl.validate_identifier(self.schema, "schema")
        validate_key_type(self.key_type)
        validate_setting_name(self.setting)

    @property
    def qualified_name(self) -> str:
        """``schema.table`` (or ``table``) for messages."""
        return self.table if self.schema is None else self.schema + "." + self.table

    def options(self) -> dict[str, Any]:
        """The keyword arguments of the ``*_statements`` functions in ``pgtenancy.ddl``."""
        return {
            "column": self.column,
            "schema": self.schema,
            "key_type": self.key_type,
            "setting": self.setting,
            "citus": self.citus,
        }


def check_tenant_table(conn: Connection, spec: IsolationSpec) -> None:
    """Raise ``SchemaMismatchError`` unless the table exists with a tenant column of the spec's key type."""
    if table_security(conn, spec.table, spec.schema) is None:
        raise SchemaMismatchError(
            f"table {spec.qualified_name!r} does not exist: create it before enabling tenant isolation"
        )
    actual = column_type(conn, spec.table, spec.column, spec.schema)
    if actual is None:
        raise SchemaMismatchError(
            f"table {spec.qualified_name!r} has no column {spec.column!r}: add the tenant column first "
            "or pass column=... naming it"
        )
    if actual not in _COLUMN_TYPES[spec.key_type]:
        raise SchemaMismatchError(
            f"column {spec.qualified_name}.{spec.column} is {actual}, but key_type {spec.key_type!r} "
            f"compares it with {sql_type_name(spec.key_type)}: pass the matching key_type"
        )


def _check_table_exists(conn: Connection, table: str, schema: str | None) -> None:
    if table_security(conn, table, schema) is None:
        name = table if schema is None else schema + "." + table
        raise SchemaMismatchError(f"table {name!r} does not exist")


def _check_role_exists(conn: Connection, role: str) -> None:
    if role_info(conn, role) is None:
        raise SchemaMismatchError(f"role {role!r} does not exist: create it first (op.create_tenant_role)")


def _run(operations: Operations, statements: list[Any]) -> None:
    for statement in statements:
        operations.execute(statement)


def _online(operations: Operations) -> Connection | None:
    """The connection to check the catalog with, or ``None`` in offline ``--sql`` mode."""
    return None if operations.migration_context.as_sql else operations.get_bind()


@Operations.register_operation("enable_tenant_isolation")
class EnableTenantIsolationOp(MigrateOperation):
    """ENABLE + FORCE row level security, the tenant policy, and an index leading with the tenant column."""

    def __init__(self, spec: IsolationSpec) -> None:
        self.spec = spec

    @classmethod
    def enable_tenant_isolation(
        cls,
        operations: Operations,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        key_type: str = "uuid",
        setting: str = DEFAULT_SETTING,
        citus: bool = False,
    ) -> None:
        """Isolate ``table`` by ``column``: RLS enabled and forced, the tenant policy, a tenant index."""
        operations.invoke(cls(IsolationSpec(table, column, schema, key_type, setting, citus)))

    def reverse(self) -> DisableTenantIsolationOp:
        return DisableTenantIsolationOp(self.spec)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("enable_tenant_isolation", self.spec.schema, self.spec.table, self.spec.column)


@Operations.register_operation("disable_tenant_isolation")
class DisableTenantIsolationOp(MigrateOperation):
    """The exact reverse of ``enable_tenant_isolation``; carries the full definition for a lossless undo."""

    def __init__(self, spec: IsolationSpec) -> None:
        self.spec = spec

    @classmethod
    def disable_tenant_isolation(
        cls,
        operations: Operations,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        key_type: str = "uuid",
        setting: str = DEFAULT_SETTING,
        citus: bool = False,
    ) -> None:
        """Drop pgtenancy's index and policy from ``table``, then NO FORCE and DISABLE row level security."""
        operations.invoke(cls(IsolationSpec(table, column, schema, key_type, setting, citus)))

    def reverse(self) -> EnableTenantIsolationOp:
        return EnableTenantIsolationOp(self.spec)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("disable_tenant_isolation", self.spec.schema, self.spec.table, self.spec.column)


@Operations.register_operation("create_tenant_role")
class CreateTenantRoleOp(MigrateOperation):
    """A login role that row-level security binds: NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE."""

    def __init__(self, name: str, *, login: bool = True, password: str | None = None) -> None:
        ddl.EnsureTenantRole(name, login=login, password=password)  # validates before any DDL
        self.name = name
        self.login = login
        self.password = password

    @classmethod
    def create_tenant_role(
        cls, operations: Operations, name: str, *, login: bool = True, password: str | None = None
    ) -> None:
        """Create role ``name`` unless it exists; an existing superuser or BYPASSRLS role is an error."""
        operations.invoke(cls(name, login=login, password=password))

    def reverse(self) -> DropTenantRoleOp:
        return DropTenantRoleOp(self.name, login=self.login, password=self.password)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_tenant_role", self.name)


@Operations.register_operation("drop_tenant_role")
class DropTenantRoleOp(MigrateOperation):
    """Drop a tenant role; carries its definition so that the reverse recreates it."""

    def __init__(self, name: str, *, login: bool = True, password: str | None = None) -> None:
        ddl.EnsureTenantRole(name, login=login, password=password)
        self.name = name
        self.login = login
        self.password = password

    @classmethod
    def drop_tenant_role(
        cls, operations: Operations, name: str, *, login: bool = True, password: str | None = None
    ) -> None:
        """Drop role ``name`` if it exists (revoke its grants first)."""
        operations.invoke(cls(name, login=login, password=password))

    def reverse(self) -> CreateTenantRoleOp:
        return CreateTenantRoleOp(self.name, login=self.login, password=self.password)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("drop_tenant_role", self.name)


@Operations.register_operation("grant_tenant_access")
class GrantTenantAccessOp(MigrateOperation):
    """DML and sequence USAGE on a table for a role, with TRUNCATE, REFERENCES and TRIGGER revoked."""

    def __init__(self, role: str, table: str, *, schema: str | None = None) -> None:
        ddl.GrantTableAccess(role, table, schema)  # validates before any DDL
        self.role = role
        self.table = table
        self.schema = schema

    @classmethod
    def grant_tenant_access(
        cls, operations: Operations, role: str, table: str, *, schema: str | None = None
    ) -> None:
        """Grant ``role`` SELECT, INSERT, UPDATE, DELETE on ``table`` and USAGE on its sequences."""
        operations.invoke(cls(role, table, schema=schema))

    def reverse(self) -> RevokeTenantAccessOp:
        return RevokeTenantAccessOp(self.role, self.table, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("grant_tenant_access", self.role, self.schema, self.table)


@Operations.register_operation("revoke_tenant_access")
class RevokeTenantAccessOp(MigrateOperation):
    """The reverse of ``grant_tenant_access``: sequence USAGE and DML revoked."""

    def __init__(self, role: str, table: str, *, schema: str | None = None) -> None:
        ddl.RevokeTableAccess(role, table, schema)
        self.role = role
        self.table = table
        self.schema = schema

    @classmethod
    def revoke_tenant_access(
        cls, operations: Operations, role: str, table: str, *, schema: str | None = None
    ) -> None:
        """Revoke from ``role`` what ``grant_tenant_access`` granted on ``table``."""
        operations.invoke(cls(role, table, schema=schema))

    def reverse(self) -> GrantTenantAccessOp:
        return GrantTenantAccessOp(self.role, self.table, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("revoke_tenant_access", self.role, self.schema, self.table)


@Operations.implementation_for(EnableTenantIsolationOp)
def _enable(operations: Operations, operation: EnableTenantIsolationOp) -> None:
    conn = _online(operations)
    if conn is not None:
        check_tenant_table(conn, operation.spec)
    _run(operations, ddl.enable_statements(operation.spec.table, **operation.spec.options()))


@Operations.implementation_for(DisableTenantIsolationOp)
def _disable(operations: Operations, operation: DisableTenantIsolationOp) -> None:
    conn = _online(operations)
    if conn is not None:
        _check_table_exists(conn, operation.spec.table, operation.spec.schema)
    _run(operations, ddl.disable_statements(operation.spec.table, **operation.spec.options()))


@Operations.implementation_for(CreateTenantRoleOp)
def _create_role(operations: Operations, operation: CreateTenantRoleOp) -> None:
    conn = _online(operations)
    if conn is not None:
        existing = role_info(conn, operation.name)
        if existing is not None and (existing.superuser or existing.bypassrls):
            raise SchemaMismatchError(
                f"role {operation.name!r} exists and is a superuser or has BYPASSRLS: row level security "
                "would not bind it; choose another name"
            )
    _run(
        operations,
        ddl.create_role_statements(operation.name, login=operation.login, password=operation.password),
    )


@Operations.implementation_for(DropTenantRoleOp)
def _drop_role(operations: Operations, operation: DropTenantRoleOp) -> None:
    _run(operations, ddl.drop_role_statements(operation.name))


@Operations.implementation_for(GrantTenantAccessOp)
def _grant(operations: Operations, operation: GrantTenantAccessOp) -> None:
    conn = _online(operations)
    if conn is not None:
        _check_table_exists(conn, operation.table, operation.schema)
        _check_role_exists(conn, operation.role)
    _run(operations, ddl.grant_statements(operation.role, operation.table, operation.schema))


@Operations.implementation_for(RevokeTenantAccessOp)
def _revoke(operations: Operations, operation: RevokeTenantAccessOp) -> None:
    conn = _online(operations)
    if conn is not None:
        _check_table_exists(conn, operation.table, operation.schema)
        _check_role_exists(conn, operation.role)
    _run(operations, ddl.revoke_statements(operation.role, operation.table, operation.schema))


def enable_tenant_isolation(
    table: str,
    column: str = "tenant_id",
    *,
    schema: str | None = None,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    citus: bool = False,
) -> None:
    """Typed ``op.enable_tenant_isolation``: RLS enabled and forced, the tenant policy, a tenant index.

    :param table: the table to isolate; it must exist and have ``column``.
    :param column: the tenant column, of the SQL type of ``key_type``.
    :param key_type: ``"uuid"``, ``"int"`` (bigint/integer column) or ``"str"`` (text/varchar column).
    :param setting: the custom setting the policy reads (the one ``pgtenancy.instrument`` sets).
    :param citus: write the policy without the ``(SELECT ...)`` wrapper, which Citus cannot route.
    """
    _alembic_op.invoke(
        EnableTenantIsolationOp(IsolationSpec(table, column, schema, key_type, setting, citus))
    )


def disable_tenant_isolation(
    table: str,
    column: str = "tenant_id",
    *,
    schema: str | None = None,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    citus: bool = False,
) -> None:
    """Typed ``op.disable_tenant_isolation``: the exact reverse of ``enable_tenant_isolation``."""
    _alembic_op.invoke(
        DisableTenantIsolationOp(IsolationSpec(table, column, schema, key_type, setting, citus))
    )


def create_tenant_role(name: str, *, login: bool = True, password: str | None = None) -> None:
    """Typed ``op.create_tenant_role``: a role RLS binds (needs a migration role with CREATEROLE)."""
    _alembic_op.invoke(CreateTenantRoleOp(name, login=login, password=password))


def drop_tenant_role(name: str, *, login: bool = True, password: str | None = None) -> None:
    """Typed ``op.drop_tenant_role``: drop the role if it exists."""
    _alembic_op.invoke(DropTenantRoleOp(name, login=login, password=password))


def grant_tenant_access(role: str, table: str, *, schema: str | None = None) -> None:
    """Typed ``op.grant_tenant_access``: DML + sequence USAGE; TRUNCATE, REFERENCES, TRIGGER revoked."""
    _alembic_op.invoke(GrantTenantAccessOp(role, table, schema=schema))


def revoke_tenant_access(role: str, table: str, *, schema: str | None = None) -> None:
    """Typed ``op.revoke_tenant_access``: the reverse of ``grant_tenant_access``."""
    _alembic_op.invoke(RevokeTenantAccessOp(role, table, schema=schema))
