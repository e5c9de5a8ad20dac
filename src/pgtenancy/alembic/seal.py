"""Alembic operations for opt-in sealing (see ``pgtenancy.seal``): the verifier, its keys, sealed policies.

``create_tenant_seal`` / ``drop_tenant_seal`` (the verifier schema), ``add_tenant_seal_key`` /
``remove_tenant_seal_key`` (keys, two valid at once during a rotation), ``seal_tenant_isolation`` /
``unseal_tenant_isolation`` (a table's policy) and ``hide_tenant_activity`` / ``show_tenant_activity``
(the app role's query text in ``pg_stat_activity``). A key is read from the environment when the
migration runs and sent as a bound parameter; offline (``--sql``) scripts never hold one.
"""

from __future__ import annotations

from typing import Any

from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Connection, text

from pgtenancy import citus, ddl, seal_sql
from pgtenancy.alembic.ops import IsolationSpec
from pgtenancy.alembic.toimpl import online_connection, run_statements
from pgtenancy.catalog import SchemaMismatchError, table_policies
from pgtenancy.config import DEFAULT_SETTING, validate_env_name
from pgtenancy.errors import ConfigurationError
from pgtenancy.seal import DEFAULT_KEY_ENV, DEFAULT_SEAL_SETTING, key_from_env, validate_key_id

__all__ = [
    "AddTenantSealKeyOp",
    "CreateTenantSealOp",
    "DropTenantSealOp",
    "HideTenantActivityOp",
    "RemoveTenantSealKeyOp",
    "SealTenantIsolationOp",
    "ShowTenantActivityOp",
    "UnsealTenantIsolationOp",
]

_DEFAULT_SCHEMA = seal_sql.DEFAULT_SEAL_SCHEMA


@Operations.register_operation("create_tenant_seal")
class CreateTenantSealOp(MigrateOperation):
    """Create the seal schema: key table (no privileges), ``add_key`` (owner only) and the verifier."""

    def __init__(
        self,
        schema: str = _DEFAULT_SCHEMA,
        *,
        setting: str = DEFAULT_SETTING,
        seal_setting: str = DEFAULT_SEAL_SETTING,
    ) -> None:
        seal_sql.create_seal_statements(schema, setting=setting, seal_setting=seal_setting)  # validates
        self.schema, self.setting, self.seal_setting = schema, setting, seal_setting

    @classmethod
    def create_tenant_seal(
        cls,
        operations: Operations,
        schema: str = _DEFAULT_SCHEMA,
        *,
        setting: str = DEFAULT_SETTING,
        seal_setting: str = DEFAULT_SEAL_SETTING,
    ) -> None:
        """Create (or replace) the verifier of ``seal_setting`` for ``setting`` in ``schema``."""
        operations.invoke(cls(schema, setting=setting, seal_setting=seal_setting))

    def reverse(self) -> DropTenantSealOp:
        return DropTenantSealOp(self.schema, setting=self.setting, seal_setting=self.seal_setting)


@Operations.register_operation("drop_tenant_seal")
class DropTenantSealOp(CreateTenantSealOp):
    """Drop the seal schema (its keys too); fails while a sealed policy still uses the verifier."""

    @classmethod
    def drop_tenant_seal(
        cls,
        operations: Operations,
        schema: str = _DEFAULT_SCHEMA,
        *,
        setting: str = DEFAULT_SETTING,
        seal_setting: str = DEFAULT_SEAL_SETTING,
    ) -> None:
        """Drop the seal schema ``schema`` (unseal every table first)."""
        operations.invoke(cls(schema, setting=setting, seal_setting=seal_setting))

    def reverse(self) -> CreateTenantSealOp:  # type: ignore[override]
        return CreateTenantSealOp(self.schema, setting=self.setting, seal_setting=self.seal_setting)


@Operations.register_operation("add_tenant_seal_key")
class AddTenantSealKeyOp(MigrateOperation):
    """Add (or replace) key ``key_id``, read from environment variable ``key_env`` (hex) when it runs."""

    def __init__(self, key_id: str, *, key_env: str = DEFAULT_KEY_ENV, schema: str = _DEFAULT_SCHEMA) -> None:
        self.key_id = validate_key_id(key_id)
        self.key_env = validate_env_name(key_env, "key_env")
        seal_sql.add_key_sql(schema)  # validates the schema name
        self.schema = schema

    @classmethod
    def add_tenant_seal_key(
        cls,
        operations: Operations,
        key_id: str,
        *,
        key_env: str = DEFAULT_KEY_ENV,
        schema: str = _DEFAULT_SCHEMA,
    ) -> None:
        """Add key ``key_id`` from ``$key_env``; signatures made with it verify from now on."""
        operations.invoke(cls(key_id, key_env=key_env, schema=schema))

    def reverse(self) -> RemoveTenantSealKeyOp:
        return RemoveTenantSealKeyOp(self.key_id, key_env=self.key_env, schema=self.schema)


@Operations.register_operation("remove_tenant_seal_key")
class RemoveTenantSealKeyOp(AddTenantSealKeyOp):
    """Remove key ``key_id``: signatures made with it stop verifying at once (the end of a rotation)."""

    @classmethod
    def remove_tenant_seal_key(
        cls,
        operations: Operations,
        key_id: str,
        *,
        key_env: str = DEFAULT_KEY_ENV,
        schema: str = _DEFAULT_SCHEMA,
    ) -> None:
        """Remove key ``key_id`` (``key_env`` is only what the reverse reads it from)."""
        operations.invoke(cls(key_id, key_env=key_env, schema=schema))

    def reverse(self) -> AddTenantSealKeyOp:  # type: ignore[override]
        return AddTenantSealKeyOp(self.key_id, key_env=self.key_env, schema=self.schema)


@Operations.register_operation("seal_tenant_isolation")
class SealTenantIsolationOp(MigrateOperation):
    """Switch an isolated table's policy to the sealed form: the tenant the verifier vouches for."""

    def __init__(self, spec: IsolationSpec, seal_schema: str = _DEFAULT_SCHEMA) -> None:
        if spec.citus:
            raise ConfigurationError(_CITUS_REFUSAL)
        self.spec = spec
        self.seal_schema = seal_schema
        self.statements(sealed=True)  # validates the names

    @classmethod
    def seal_tenant_isolation(
        cls,
        operations: Operations,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        key_type: str = "uuid",
        setting: str = DEFAULT_SETTING,
        seal_schema: str = _DEFAULT_SCHEMA,
    ) -> None:
        """Seal ``table``'s policy (isolate it with ``enable_tenant_isolation`` first)."""
        spec = IsolationSpec(table, column, schema, key_type=key_type, setting=setting)
        operations.invoke(cls(spec, seal_schema))

    def statements(self, *, sealed: bool) -> list[Any]:
        spec = self.spec
        return seal_sql.policy_statements(
            spec.table,
            spec.column,
            spec.schema,
            key_type=spec.key_type,
            sealed=sealed,
            seal_schema=self.seal_schema,
            setting=spec.setting,
        )

    def reverse(self) -> UnsealTenantIsolationOp:
        return UnsealTenantIsolationOp(self.spec, self.seal_schema)


@Operations.register_operation("unseal_tenant_isolation")
class UnsealTenantIsolationOp(SealTenantIsolationOp):
    """Switch a sealed table's policy back to the plain form (the setting alone)."""

    @classmethod
    def unseal_tenant_isolation(
        cls,
        operations: Operations,
        table: str,
        column: str = "tenant_id",
        *,
        schema: str | None = None,
        key_type: str = "uuid",
        setting: str = DEFAULT_SETTING,
        seal_schema: str = _DEFAULT_SCHEMA,
    ) -> None:
        """Unseal ``table``'s policy."""
        spec = IsolationSpec(table, column, schema, key_type=key_type, setting=setting)
        operations.invoke(cls(spec, seal_schema))

    def reverse(self) -> SealTenantIsolationOp:  # type: ignore[override]
        return SealTenantIsolationOp(self.spec, self.seal_schema)


@Operations.register_operation("hide_tenant_activity")
class HideTenantActivityOp(MigrateOperation):
    """``ALTER ROLE role SET track_activities = off`` and ``pg_stat_statements.track_utility = off``: its
    sessions' SQL (and seals) leave no text in ``pg_stat_activity`` or ``pg_stat_statements`` for other
    sessions to read. Needs a superuser (or, from PostgreSQL 15, the SET privilege on both)."""

    def __init__(self, role: str) -> None:
        self.role = ddl.validate_role_name(role)

    @classmethod
    def hide_tenant_activity(cls, operations: Operations, role: str) -> None:
        """Stop ``pg_stat_activity`` from showing ``role``'s statements (from its next connection on)."""
        operations.invoke(cls(role))

    def reverse(self) -> ShowTenantActivityOp:
        return ShowTenantActivityOp(self.role)


@Operations.register_operation("show_tenant_activity")
class ShowTenantActivityOp(HideTenantActivityOp):
    """``ALTER ROLE role RESET`` both settings: the reverse of ``hide_tenant_activity``."""

    @classmethod
    def show_tenant_activity(cls, operations: Operations, role: str) -> None:
        """Let ``pg_stat_activity`` show ``role``'s statements again."""
        operations.invoke(cls(role))

    def reverse(self) -> HideTenantActivityOp:  # type: ignore[override]
        return HideTenantActivityOp(self.role)


_CITUS_REFUSAL = (
    "sealing is not available on Citus: its workers run other backends than the one a signature names, "
    "and refuse the verifier's subquery in a policy"
)


@Operations.implementation_for(CreateTenantSealOp)
def _create_seal(operations: Operations, operation: CreateTenantSealOp) -> None:
    statements = seal_sql.create_seal_statements(
        operation.schema, setting=operation.setting, seal_setting=operation.seal_setting
    )
    run_statements(operations, statements)


@Operations.implementation_for(DropTenantSealOp)
def _drop_seal(operations: Operations, operation: DropTenantSealOp) -> None:
    run_statements(operations, seal_sql.drop_seal_statements(operation.schema))


@Operations.implementation_for(AddTenantSealKeyOp)
def _add_key(operations: Operations, operation: AddTenantSealKeyOp) -> None:
    conn = online_connection(operations)
    if conn is None:  # offline: the script never holds a key
        schema = seal_sql.quoted_schema(operation.schema)
        operations.migration_context.impl.static_output(
            f"-- pgtenancy: this script adds no seal key (offline SQL never holds one). Add key "
            f"{operation.key_id!r} from ${operation.key_env} once {schema} exists, e.g. in psql:\n"
            + seal_sql.add_key_note(operation.schema, operation.key_id, operation.key_env)
        )
        return
    secret = key_from_env(operation.key_env, f"add_tenant_seal_key({operation.key_id!r}) in the migration")
    conn.execute(text(seal_sql.add_key_sql(operation.schema)), {"key_id": operation.key_id, "secret": secret})


@Operations.implementation_for(RemoveTenantSealKeyOp)
def _remove_key(operations: Operations, operation: RemoveTenantSealKeyOp) -> None:
    run_statements(operations, seal_sql.remove_key_statements(operation.key_id, operation.schema))


def _check_sealable(conn: Connection, operation: SealTenantIsolationOp) -> None:
    spec = operation.spec
    if citus.citus_version(conn) is not None:
        raise ConfigurationError(_CITUS_REFUSAL)
    if not any(policy.name == ddl.POLICY_NAME for policy in table_policies(conn, spec.table, spec.schema)):
        raise SchemaMismatchError(
            f"table {spec.qualified_name!r} has no pgtenancy policy: run enable_tenant_isolation first"
        )
    verifier = seal_sql.verifier_name(operation.seal_schema)
    if conn.execute(text("SELECT pg_catalog.to_regproc(:name)"), {"name": verifier}).scalar() is None:
        raise SchemaMismatchError(f"the verifier {verifier}() does not exist: run create_tenant_seal first")


@Operations.implementation_for(SealTenantIsolationOp)
def _seal(operations: Operations, operation: SealTenantIsolationOp) -> None:
    conn = online_connection(operations)
    if conn is not None:
        _check_sealable(conn, operation)
    run_statements(operations, operation.statements(sealed=True))


@Operations.implementation_for(UnsealTenantIsolationOp)
def _unseal(operations: Operations, operation: UnsealTenantIsolationOp) -> None:
    run_statements(operations, operation.statements(sealed=False))


@Operations.implementation_for(HideTenantActivityOp)
def _hide(operations: Operations, operation: HideTenantActivityOp) -> None:
    run_statements(operations, seal_sql.activity_statements(operation.role, hidden=True))


@Operations.implementation_for(ShowTenantActivityOp)
def _show(operations: Operations, operation: ShowTenantActivityOp) -> None:
    run_statements(operations, seal_sql.activity_statements(operation.role, hidden=False))
