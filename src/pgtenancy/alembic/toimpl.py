"""What running each pgtenancy Alembic operation does: check the live catalog, then emit its SQL.

The SQL comes from ``pgtenancy.ddl`` (Citus distribution: ``pgtenancy.citus``). Online, each operation
first checks the live catalog and raises ``SchemaMismatchError`` (or ``CitusNotAvailableError`` for a
Citus operation on a database without Citus) before any DDL runs; offline (``alembic upgrade --sql``) it
writes the same idempotent statements. Registered with Alembic when ``pgtenancy.alembic`` is imported.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from alembic.operations import Operations
from sqlalchemy import Connection, TextClause
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDLElement
from sqlalchemy.sql.compiler import DDLCompiler

from pgtenancy import citus, ddl
from pgtenancy.alembic.ops import (
    CreateReferenceTableOp,
    CreateTenantRoleOp,
    DisableTenantIsolationOp,
    DistributeTenantTableOp,
    DropTenantRoleOp,
    EnableTenantIsolationOp,
    GrantTemporaryTablesOp,
    GrantTenantAccessOp,
    IsolationSpec,
    RevokeTemporaryTablesOp,
    RevokeTenantAccessOp,
    UndistributeTableOp,
)
from pgtenancy.catalog import SchemaMismatchError, column_type, role_info, table_policies, table_security
from pgtenancy.config import sql_type_name
from pgtenancy.errors import ConfigurationError

__all__ = ["check_tenant_table", "online_connection", "run_statements"]

# The column types a policy comparing with the setting cast to each key type's SQL type can use.
_COLUMN_TYPES = {
    "uuid": frozenset({"uuid"}),
    "int": frozenset({"bigint", "integer", "smallint"}),
    "str": frozenset({"text", "character varying"}),
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


def run_statements(operations: Operations, statements: list[Any]) -> None:
    """Execute each statement through Alembic (online, or written to the offline script)."""
    for statement in statements:
        operations.execute(statement)


def online_connection(operations: Operations) -> Connection | None:
    """The connection to check the catalog with, or ``None`` in offline ``--sql`` mode."""
    return None if operations.migration_context.as_sql else operations.get_bind()


class _LiteralStatement(DDLElement):
    """A statement with bound values, rendered with its values as literals (for the offline script)."""

    inherit_cache = False

    def __init__(self, statement: TextClause) -> None:
        self.statement = statement


@compiles(_LiteralStatement)
def _compile_literal(element: _LiteralStatement, compiler: DDLCompiler, **kw: Any) -> str:
    return str(compiler.sql_compiler.process(element.statement, literal_binds=True))


@Operations.implementation_for(EnableTenantIsolationOp)
def _enable(operations: Operations, operation: EnableTenantIsolationOp) -> None:
    spec = operation.spec
    conn = online_connection(operations)
    if conn is not None:
        check_tenant_table(conn, spec)
        if not spec.citus and citus.citus_version(conn) is not None:
            spec = replace(spec, citus=True)  # Citus refuses the (SELECT ...) policy on its tables
    run_statements(operations, ddl.enable_statements(spec.table, **spec.options()))


@Operations.implementation_for(DisableTenantIsolationOp)
def _disable(operations: Operations, operation: DisableTenantIsolationOp) -> None:
    conn = online_connection(operations)
    if conn is not None:
        _check_table_exists(conn, operation.spec.table, operation.spec.schema)
    run_statements(operations, ddl.disable_statements(operation.spec.table, **operation.spec.options()))


@Operations.implementation_for(CreateTenantRoleOp)
def _create_role(operations: Operations, operation: CreateTenantRoleOp) -> None:
    conn = online_connection(operations)
    if conn is None:  # offline: the script is a file people read, keep and share; it never holds a secret
        run_statements(operations, ddl.create_role_statements(operation.name, login=operation.login))
        if operation.password is not None or operation.password_env is not None:
            operations.migration_context.impl.static_output(_password_note(operations, operation))
        return
    password = operation.password if operation.password_env is None else _env_password(operation.password_env)
    existing = role_info(conn, operation.name)
    if existing is not None and (existing.superuser or existing.bypassrls):
        raise SchemaMismatchError(
            f"role {operation.name!r} exists and is a superuser or has BYPASSRLS: row level security "
            "would not bind it; choose another name"
        )
    run_statements(
        operations, ddl.create_role_statements(operation.name, login=operation.login, password=password)
    )


def _env_password(variable: str) -> str:
    """The password held by environment variable ``variable`` when the migration runs."""
    password = os.environ.get(variable)
    if not password:
        raise ConfigurationError(
            f"create_tenant_role(password_env={variable!r}): set the environment variable {variable} "
            "to the role's password before running the migration"
        )
    return password


def _password_note(operations: Operations, operation: CreateTenantRoleOp) -> str:
    """The offline script's comment saying that the role's password is to be set by hand, and from what."""
    quoted = operations.migration_context.dialect.identifier_preparer.quote(operation.name)
    role = quoted if quoted.isprintable() else "<the role above>"  # a line break would end the comment
    source = f" to the value of ${operation.password_env}" if operation.password_env else ""
    return (
        f"-- pgtenancy: this script sets no password for role {role} (offline SQL never holds one);\n"
        f"-- set it{source} once it exists, e.g. in psql: \\password {role}\n"
    )


@Operations.implementation_for(DropTenantRoleOp)
def _drop_role(operations: Operations, operation: DropTenantRoleOp) -> None:
    run_statements(operations, ddl.drop_role_statements(operation.name))


@Operations.implementation_for(GrantTenantAccessOp)
def _grant(operations: Operations, operation: GrantTenantAccessOp) -> None:
    conn = online_connection(operations)
    if conn is not None:
        _check_table_exists(conn, operation.table, operation.schema)
        _check_role_exists(conn, operation.role)
    run_statements(operations, ddl.grant_statements(operation.role, operation.table, operation.schema))


@Operations.implementation_for(RevokeTenantAccessOp)
def _revoke(operations: Operations, operation: RevokeTenantAccessOp) -> None:
    conn = online_connection(operations)
    if conn is not None:
        _check_table_exists(conn, operation.table, operation.schema)
        _check_role_exists(conn, operation.role)
    run_statements(operations, ddl.revoke_statements(operation.role, operation.table, operation.schema))


@Operations.implementation_for(RevokeTemporaryTablesOp)
def _revoke_temporary(operations: Operations, operation: RevokeTemporaryTablesOp) -> None:
    conn = online_connection(operations)
    if conn is not None:
        _check_role_exists(conn, operation.role)
    run_statements(operations, ddl.temporary_statements(operation.role, allow=False))


@Operations.implementation_for(GrantTemporaryTablesOp)
def _grant_temporary(operations: Operations, operation: GrantTemporaryTablesOp) -> None:
    run_statements(operations, ddl.temporary_statements(operation.role, allow=True))


def _check_citus_table(conn: Connection, table: str, column: str | None, schema: str | None) -> None:
    """Raise ``CitusNotAvailableError`` without Citus, ``SchemaMismatchError`` for a missing table/column."""
    citus.require_citus(conn)
    _check_table_exists(conn, table, schema)
    if column is not None and column_type(conn, table, column, schema) is None:
        name = table if schema is None else schema + "." + table
        raise SchemaMismatchError(f"table {name!r} has no column {column!r} to distribute it by")


def _check_no_subquery_policy(conn: Connection, table: str, schema: str | None) -> None:
    """Raise ``SchemaMismatchError`` if a policy of ``table`` has a subquery: Citus cannot distribute it."""
    for policy in table_policies(conn, table, schema):
        if any("SELECT" in (expression or "") for expression in (policy.using, policy.with_check)):
            raise SchemaMismatchError(
                f"policy {policy.name!r} on {table!r} has a subquery, which Citus refuses on a distributed "
                "table: run op.enable_tenant_isolation(..., citus=True) first (or drop the policy, "
                "distribute, and enable isolation afterwards)"
            )


@Operations.implementation_for(DistributeTenantTableOp)
def _distribute(operations: Operations, operation: DistributeTenantTableOp) -> None:
    conn = online_connection(operations)
    if conn is None:
        operations.execute(_LiteralStatement(operation.statement()))
        return
    _check_citus_table(conn, operation.table, operation.column, operation.schema)
    _check_no_subquery_policy(conn, operation.table, operation.schema)
    citus.create_distributed_table(
        conn,
        operation.table,
        operation.column,
        schema=operation.schema,
        colocate_with=operation.colocate_with,
    )


@Operations.implementation_for(CreateReferenceTableOp)
def _create_reference(operations: Operations, operation: CreateReferenceTableOp) -> None:
    conn = online_connection(operations)
    if conn is None:
        operations.execute(_LiteralStatement(operation.statement()))
        return
    _check_citus_table(conn, operation.table, None, operation.schema)
    citus.create_reference_table(conn, operation.table, schema=operation.schema)


@Operations.implementation_for(UndistributeTableOp)
def _undistribute(operations: Operations, operation: UndistributeTableOp) -> None:
    conn = online_connection(operations)
    if conn is None:
        operations.execute(_LiteralStatement(operation.statement()))
        return
    _check_citus_table(conn, operation.table, None, operation.schema)
    citus.undistribute_table(conn, operation.table, schema=operation.schema)
