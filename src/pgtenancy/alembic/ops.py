"""Alembic operations for tenant isolation, roles and grants: the operation objects and typed calls.

Each operation is a plain object with ``reverse()``; the same object is run, rendered into a revision
file and reversed. What running one does lives in ``pgtenancy.alembic.toimpl``; how one is written into
a revision, in ``pgtenancy.alembic.render``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alembic import op as _alembic_op
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import TextClause

from pgtenancy import citus, ddl
from pgtenancy.config import DEFAULT_SETTING, validate_env_name, validate_key_type, validate_setting_name
from pgtenancy.errors import ConfigurationError

__all__ = [
    "CreateReferenceTableOp",
    "CreateTenantRoleOp",
    "DisableTenantIsolationOp",
    "DistributeTenantTableOp",
    "DropTenantRoleOp",
    "EnableTenantIsolationOp",
    "GrantTemporaryTablesOp",
    "GrantTenantAccessOp",
    "IsolationSpec",
    "RevokeTemporaryTablesOp",
    "RevokeTenantAccessOp",
    "UndistributeTableOp",
    "create_reference_table",
    "create_tenant_role",
    "disable_tenant_isolation",
    "distribute_tenant_table",
    "drop_tenant_role",
    "enable_tenant_isolation",
    "grant_temporary_tables",
    "grant_tenant_access",
    "revoke_temporary_tables",
    "revoke_tenant_access",
    "undistribute_table",
]


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


def _password_env(name: str | None, password: str | None) -> str | None:
    """``name`` if it is a usable environment variable name and no literal password competes with it."""
    if name is None:
        return None
    if password is not None:
        raise ConfigurationError("give a role password= or password_env=, not both")
    return validate_env_name(name, "password_env")


@Operations.register_operation("create_tenant_role")
class CreateTenantRoleOp(MigrateOperation):
    """A login role that row-level security binds: NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE.

    Its password is ``password``, or read from the environment variable ``password_env`` when the
    migration runs; offline (``--sql``) the role is written without one and a comment says how to set it.
    """

    def __init__(
        self, name: str, *, login: bool = True, password: str | None = None, password_env: str | None = None
    ) -> None:
        ddl.EnsureTenantRole(name, login=login, password=password)  # validates before any DDL
        self.name = name
        self.login = login
        self.password = password
        self.password_env = _password_env(password_env, password)

    @classmethod
    def create_tenant_role(
        cls,
        operations: Operations,
        name: str,
        *,
        login: bool = True,
        password: str | None = None,
        password_env: str | None = None,
    ) -> None:
        """Create role ``name`` unless it exists; an existing superuser or BYPASSRLS role is an error."""
        operations.invoke(cls(name, login=login, password=password, password_env=password_env))

    def reverse(self) -> DropTenantRoleOp:
        return DropTenantRoleOp(
            self.name, login=self.login, password=self.password, password_env=self.password_env
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_tenant_role", self.name)


@Operations.register_operation("drop_tenant_role")
class DropTenantRoleOp(MigrateOperation):
    """Drop a tenant role; carries its definition so that the reverse recreates it."""

    def __init__(
        self, name: str, *, login: bool = True, password: str | None = None, password_env: str | None = None
    ) -> None:
        ddl.EnsureTenantRole(name, login=login, password=password)
        self.name = name
        self.login = login
        self.password = password
        self.password_env = _password_env(password_env, password)

    @classmethod
    def drop_tenant_role(
        cls,
        operations: Operations,
        name: str,
        *,
        login: bool = True,
        password: str | None = None,
        password_env: str | None = None,
    ) -> None:
        """Drop role ``name`` if it exists (revoke its grants first)."""
        operations.invoke(cls(name, login=login, password=password, password_env=password_env))

    def reverse(self) -> CreateTenantRoleOp:
        return CreateTenantRoleOp(
            self.name, login=self.login, password=self.password, password_env=self.password_env
        )

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


@Operations.register_operation("revoke_temporary_tables")
class RevokeTemporaryTablesOp(MigrateOperation):
    """Take ``TEMPORARY`` on the current database away from a role and ``PUBLIC``: no temp tables to leak."""

    def __init__(self, role: str) -> None:
        ddl.DatabaseTemporary(role, allow=False)  # validates before any DDL
        self.role = role

    @classmethod
    def revoke_temporary_tables(cls, operations: Operations, role: str) -> None:
        """``REVOKE TEMPORARY ON DATABASE <current> FROM PUBLIC, role``."""
        operations.invoke(cls(role))

    def reverse(self) -> GrantTemporaryTablesOp:
        return GrantTemporaryTablesOp(self.role)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("revoke_temporary_tables", self.role)


@Operations.register_operation("grant_temporary_tables")
class GrantTemporaryTablesOp(MigrateOperation):
    """Give ``TEMPORARY`` on the current database back to ``PUBLIC`` (PostgreSQL's default)."""

    def __init__(self, role: str) -> None:
        ddl.DatabaseTemporary(role, allow=True)
        self.role = role

    @classmethod
    def grant_temporary_tables(cls, operations: Operations, role: str) -> None:
        """``GRANT TEMPORARY ON DATABASE <current> TO PUBLIC``: the reverse of ``revoke_temporary_tables``."""
        operations.invoke(cls(role))

    def reverse(self) -> RevokeTemporaryTablesOp:
        return RevokeTemporaryTablesOp(self.role)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("grant_temporary_tables", self.role)


def _validate_table(table: str, schema: str | None) -> None:
    ddl.validate_identifier(table, "table")
    if schema is not None:
        ddl.validate_identifier(schema, "schema")


@Operations.register_operation("distribute_tenant_table")
class DistributeTenantTableOp(MigrateOperation):
    """Hash-distribute a tenant table by its tenant column with Citus, so each tenant lives in one shard."""

    def __init__(
        self,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        colocate_with: str | None = None,
    ) -> None:
        _validate_table(table, schema)
        ddl.validate_identifier(column, "column")
        if colocate_with is not None:
            ddl.validate_identifier(colocate_with, "colocate_with table")
        self.table = table
        self.column = column
        self.schema = schema
        self.colocate_with = colocate_with

    @classmethod
    def distribute_tenant_table(
        cls,
        operations: Operations,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        colocate_with: str | None = None,
    ) -> None:
        """Distribute ``table`` by ``column`` (``create_distributed_table``) unless it already is."""
        operations.invoke(cls(table, column, schema=schema, colocate_with=colocate_with))

    def statement(self) -> TextClause:
        """The guarded ``SELECT create_distributed_table(...)``."""
        return citus.distributed_table_sql(
            self.table, self.column, schema=self.schema, colocate_with=self.colocate_with
        )

    def reverse(self) -> UndistributeTableOp:
        return UndistributeTableOp(
            self.table, self.column, schema=self.schema, colocate_with=self.colocate_with
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("distribute_tenant_table", self.schema, self.table, self.column)


@Operations.register_operation("create_reference_table")
class CreateReferenceTableOp(MigrateOperation):
    """Make a table a Citus reference table: one copy on every node, for shared lookup data."""

    def __init__(self, table: str, *, schema: str | None = None) -> None:
        _validate_table(table, schema)
        self.table = table
        self.schema = schema

    @classmethod
    def create_reference_table(cls, operations: Operations, table: str, *, schema: str | None = None) -> None:
        """Replicate ``table`` to every node (``create_reference_table``) unless it already is."""
        operations.invoke(cls(table, schema=schema))

    def statement(self) -> TextClause:
        """The guarded ``SELECT create_reference_table(...)``."""
        return citus.reference_table_sql(self.table, schema=self.schema)

    def reverse(self) -> UndistributeTableOp:
        return UndistributeTableOp(self.table, schema=self.schema, reference=True)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("create_reference_table", self.schema, self.table)


@Operations.register_operation("undistribute_table")
class UndistributeTableOp(MigrateOperation):
    """Turn a Citus table back into a plain table; carries its distribution so the reverse restores it.

    ``reference=True`` undoes ``create_reference_table``; otherwise ``column`` and ``colocate_with``
    are what ``distribute_tenant_table`` used.
    """

    def __init__(
        self,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        colocate_with: str | None = None,
        reference: bool = False,
    ) -> None:
        if reference and colocate_with is not None:
            raise ConfigurationError("a reference table is not co-located: leave colocate_with out")
        self.table = table
        self.column = column
        self.schema = schema
        self.colocate_with = colocate_with
        self.reference = reference
        self.reverse()  # validates the names now, not when the reverse runs

    @classmethod
    def undistribute_table(
        cls,
        operations: Operations,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        colocate_with: str | None = None,
        reference: bool = False,
    ) -> None:
        """Make ``table`` a plain table again (``undistribute_table``, rows kept) if Citus holds it."""
        operations.invoke(cls(table, column, schema=schema, colocate_with=colocate_with, reference=reference))

    def statement(self) -> TextClause:
        """The guarded ``SELECT undistribute_table(...)``."""
        return citus.undistribute_table_sql(self.table, schema=self.schema)

    def reverse(self) -> DistributeTenantTableOp | CreateReferenceTableOp:
        if self.reference:
            return CreateReferenceTableOp(self.table, schema=self.schema)
        return DistributeTenantTableOp(
            self.table, self.column, schema=self.schema, colocate_with=self.colocate_with
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("undistribute_table", self.schema, self.table)


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
    :param citus: write the policy without the ``(SELECT ...)`` wrapper, which Citus refuses on its
        tables; online it is chosen by itself when the database has the Citus extension.
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


def create_tenant_role(
    name: str, *, login: bool = True, password: str | None = None, password_env: str | None = None
) -> None:
    """Typed ``op.create_tenant_role``: a role RLS binds (needs a migration role with CREATEROLE)."""
    _alembic_op.invoke(CreateTenantRoleOp(name, login=login, password=password, password_env=password_env))


def drop_tenant_role(
    name: str, *, login: bool = True, password: str | None = None, password_env: str | None = None
) -> None:
    """Typed ``op.drop_tenant_role``: drop the role if it exists."""
    _alembic_op.invoke(DropTenantRoleOp(name, login=login, password=password, password_env=password_env))


def grant_tenant_access(role: str, table: str, *, schema: str | None = None) -> None:
    """Typed ``op.grant_tenant_access``: DML + sequence USAGE; TRUNCATE, REFERENCES, TRIGGER revoked."""
    _alembic_op.invoke(GrantTenantAccessOp(role, table, schema=schema))


def revoke_tenant_access(role: str, table: str, *, schema: str | None = None) -> None:
    """Typed ``op.revoke_tenant_access``: the reverse of ``grant_tenant_access``."""
    _alembic_op.invoke(RevokeTenantAccessOp(role, table, schema=schema))


def revoke_temporary_tables(role: str) -> None:
    """Typed ``op.revoke_temporary_tables``: ``role`` (and PUBLIC) may no longer create temporary tables.

    Temporary tables are not protected by row level security and outlive a transaction on a pooled
    connection; pgtenancy drops those it sees created before another tenant's transaction, but not those
    a function body creates. Roles that need them (reporting, the migration role) get ``TEMPORARY``
    granted back by name; the database owner keeps it.
    """
    _alembic_op.invoke(RevokeTemporaryTablesOp(role))


def grant_temporary_tables(role: str) -> None:
    """Typed ``op.grant_temporary_tables``: PostgreSQL's default back (PUBLIC may create temporary tables)."""
    _alembic_op.invoke(GrantTemporaryTablesOp(role))


def distribute_tenant_table(
    table: str, column: str = "tenant_id", *, schema: str | None = None, colocate_with: str | None = None
) -> None:
    """Typed ``op.distribute_tenant_table``: hash-distribute ``table`` by its tenant column with Citus.

    Emits ``SELECT create_distributed_table(...)`` guarded by ``pg_dist_partition`` (a no-op when the
    table is already distributed by ``column``). Online, a database without Citus raises
    ``CitusNotAvailableError`` and a table distributed otherwise ``CitusDistributionError``, before any DDL.

    :param column: the tenant column, so each tenant's rows share a shard.
    :param colocate_with: a table (same schema) to co-locate with, ``"none"`` for a new co-location group,
        or ``None`` for Citus' default (tables whose distribution column has the same type).
    """
    _alembic_op.invoke(DistributeTenantTableOp(table, column, schema=schema, colocate_with=colocate_with))


def create_reference_table(table: str, *, schema: str | None = None) -> None:
    """Typed ``op.create_reference_table``: copy ``table`` to every Citus node (shared lookup data)."""
    _alembic_op.invoke(CreateReferenceTableOp(table, schema=schema))


def undistribute_table(
    table: str,
    column: str = "tenant_id",
    *,
    schema: str | None = None,
    colocate_with: str | None = None,
    reference: bool = False,
) -> None:
    """Typed ``op.undistribute_table``: a plain table again, rows kept; the reverse of the two above.

    ``column``/``colocate_with`` (or ``reference=True``) only say what the reverse operation restores.
    """
    _alembic_op.invoke(
        UndistributeTableOp(table, column, schema=schema, colocate_with=colocate_with, reference=reference)
    )
