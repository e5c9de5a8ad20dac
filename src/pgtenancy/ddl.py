"""DDL constructs for tenant isolation: RLS flags, the tenant policy, its index, the app role and grants.

Every construct is a SQLAlchemy ``DDLElement`` compiled by ``@compiles``: names are quoted by the
dialect's ``identifier_preparer``, values rendered as literals by the dialect, and each one renders
a single plain SQL statement (valid in Alembic's offline ``--sql`` output too). Every statement is
idempotent: running it twice changes nothing and does not fail. The ``*_statements`` functions list
the statements each migration operation runs, in order.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from sqlalchemy import String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDLElement
from sqlalchemy.sql.compiler import DDLCompiler

from pgtenancy.config import DEFAULT_SETTING, sql_type_name, validate_setting_name
from pgtenancy.errors import ConfigurationError
from pgtenancy.predicate import tenant_predicate_sql

__all__ = [
    "MANAGED_PREFIX",
    "POLICY_NAME",
    "CreateTenantPolicy",
    "DatabaseTemporary",
    "DropTenantIndex",
    "DropTenantPolicy",
    "DropTenantRole",
    "EnsureTenantIndex",
    "EnsureTenantRole",
    "ForceRowLevelSecurity",
    "GrantReadAccess",
    "GrantSchemaUsage",
    "GrantSequenceUsage",
    "GrantTableAccess",
    "RevokeReadAccess",
    "RevokeSchemaUsage",
    "RevokeSequenceUsage",
    "RevokeTableAccess",
    "RevokeUnsafePrivileges",
    "RowLevelSecurity",
    "create_role_statements",
    "disable_statements",
    "drop_role_statements",
    "enable_statements",
    "grant_statements",
    "revoke_statements",
    "temporary_statements",
    "tenant_index_name",
    "validate_identifier",
    "validate_role_name",
]

MANAGED_PREFIX: Final = "pgtenancy_"  # names of the policies and indexes pgtenancy creates and may drop
POLICY_NAME: Final = MANAGED_PREFIX + "tenant_isolation"
DML_PRIVILEGES: Final = "SELECT, INSERT, UPDATE, DELETE"
UNSAFE_PRIVILEGES: Final = "TRUNCATE, REFERENCES, TRIGGER"  # TRUNCATE and REFERENCES ignore RLS

_MAX_IDENTIFIER_BYTES = 63
_DOLLAR_TAG = "$pgtenancy$"
_RESERVED_ROLES = frozenset({"public", "none", "current_user", "current_role", "session_user", "system_user"})


def validate_identifier(name: object, what: str) -> str:
    """Return ``name`` if PostgreSQL keeps it intact as an identifier (non-empty, at most 63 bytes)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ConfigurationError(f"invalid {what} name {name!r}: give a non-empty string")
    if len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ConfigurationError(
            f"{what} name {name!r} is longer than 63 bytes; PostgreSQL would truncate it: shorten it"
        )
    _check_dollar_tag(name)
    return name


def _check_dollar_tag(value: str) -> None:
    """Refuse text that would end pgtenancy's ``DO $pgtenancy$ ... $pgtenancy$`` blocks early."""
    if _DOLLAR_TAG in value:
        raise ConfigurationError("names and passwords must not contain " + _DOLLAR_TAG)


def validate_role_name(name: object) -> str:
    """Return ``name`` if it can name an ordinary role (not PUBLIC, a special role word, or ``pg_*``)."""
    role = validate_identifier(name, "role")
    if role.lower() in _RESERVED_ROLES or role.lower().startswith("pg_"):
        raise ConfigurationError(f"role name {role!r} is reserved by PostgreSQL: choose another name")
    return role


def tenant_index_name(table: str, column: str) -> str:
    """The name of the index pgtenancy creates on ``table(column)``: managed prefix, at most 63 bytes."""
    name = MANAGED_PREFIX + "ix_" + table + "_" + column
    if len(name.encode()) <= _MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    while len(name.encode()) > _MAX_IDENTIFIER_BYTES - 9:
        name = name[:-1]
    return name + "_" + digest


class _TableDDL(DDLElement):
    """A statement about one table, optionally schema-qualified."""

    inherit_cache = False

    def __init__(self, table: str, schema: str | None = None) -> None:
        self.table = validate_identifier(table, "table")
        self.schema = None if schema is None else validate_identifier(schema, "schema")


class RowLevelSecurity(_TableDDL):
    """``ALTER TABLE t ENABLE|DISABLE ROW LEVEL SECURITY``."""

    def __init__(self, table: str, schema: str | None = None, *, enabled: bool = True) -> None:
        super().__init__(table, schema)
        self.enabled = enabled


class ForceRowLevelSecurity(_TableDDL):
    """``ALTER TABLE t [NO] FORCE ROW LEVEL SECURITY``: whether the table owner is bound by RLS too."""

    def __init__(self, table: str, schema: str | None = None, *, forced: bool = True) -> None:
        super().__init__(table, schema)
        self.forced = forced


class CreateTenantPolicy(_TableDDL):
    """``CREATE POLICY`` whose ``USING`` and ``WITH CHECK`` compare the tenant column with the setting."""

    def __init__(
        self,
        table: str,
        column: str = "tenant_id",
        schema: str | None = None,
        *,
        key_type: str = "uuid",
        setting: str = DEFAULT_SETTING,
        citus: bool = False,
        name: str = POLICY_NAME,
    ) -> None:
        super().__init__(table, schema)
        self.column = validate_identifier(column, "column")
        self.key_type = key_type
        sql_type_name(key_type)  # validates the key type now, not at compile time
        self.setting = validate_setting_name(setting)
        self.citus = citus
        self.name = validate_identifier(name, "policy")


class DropTenantPolicy(_TableDDL):
    """``DROP POLICY IF EXISTS name ON t``."""

    def __init__(self, table: str, schema: str | None = None, *, name: str = POLICY_NAME) -> None:
        super().__init__(table, schema)
        self.name = validate_identifier(name, "policy")


class EnsureTenantIndex(_TableDDL):
    """A ``DO`` block creating an index on the tenant column unless a (non-partial) index leads with it."""

    def __init__(self, table: str, column: str = "tenant_id", schema: str | None = None) -> None:
        super().__init__(table, schema)
        self.column = validate_identifier(column, "column")
        self.name = tenant_index_name(self.table, self.column)


class DropTenantIndex(_TableDDL):
    """``DROP INDEX IF EXISTS`` the index ``EnsureTenantIndex`` created (never an index of the user's)."""

    def __init__(self, table: str, column: str = "tenant_id", schema: str | None = None) -> None:
        super().__init__(table, schema)
        self.column = validate_identifier(column, "column")
        self.name = tenant_index_name(self.table, self.column)


class EnsureTenantRole(DDLElement):
    """A ``DO`` block creating a role that RLS binds unless it exists; an existing unsafe role is an error.

    The role is ``NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION``; an existing role
    that is a superuser or has BYPASSRLS makes the block raise instead of passing silently.
    """

    inherit_cache = False

    def __init__(self, name: str, *, login: bool = True, password: str | None = None) -> None:
        self.name = validate_role_name(name)
        self.login = login
        if password is not None and (not isinstance(password, str) or not password or "\x00" in password):
            raise ConfigurationError("a role password must be a non-empty string")
        if password is not None:
            _check_dollar_tag(password)
        self.password = password


class DropTenantRole(DDLElement):
    """``DROP ROLE IF EXISTS name``."""

    inherit_cache = False

    def __init__(self, name: str) -> None:
        self.name = validate_role_name(name)


class _GrantDDL(_TableDDL):
    """A grant or revoke of privileges on one table to one role."""

    def __init__(self, role: str, table: str, schema: str | None = None) -> None:
        super().__init__(table, schema)
        self.role = validate_role_name(role)


class GrantTableAccess(_GrantDDL):
    """``GRANT SELECT, INSERT, UPDATE, DELETE ON t TO role``."""


class RevokeTableAccess(_GrantDDL):
    """``REVOKE SELECT, INSERT, UPDATE, DELETE ON t FROM role``."""


class RevokeUnsafePrivileges(_GrantDDL):
    """``REVOKE TRUNCATE, REFERENCES, TRIGGER ON t FROM role``: TRUNCATE and REFERENCES ignore RLS."""


class GrantReadAccess(_GrantDDL):
    """``GRANT SELECT ON t TO role``: read-only access, e.g. to a shared reference table without tenancy."""


class RevokeReadAccess(_GrantDDL):
    """``REVOKE SELECT ON t FROM role``."""


class _SchemaGrantDDL(DDLElement):
    """A grant or revoke of a privilege on one schema to one role."""

    inherit_cache = False

    def __init__(self, role: str, schema: str) -> None:
        self.role = validate_role_name(role)
        self.schema = validate_identifier(schema, "schema")


class GrantSchemaUsage(_SchemaGrantDDL):
    """``GRANT USAGE ON SCHEMA s TO role``: the role may look up the schema's tables (grants still apply)."""


class RevokeSchemaUsage(_SchemaGrantDDL):
    """``REVOKE USAGE ON SCHEMA s FROM role``."""


class GrantSequenceUsage(_GrantDDL):
    """A ``DO`` block granting ``USAGE`` on every sequence the table owns (serial and identity columns)."""


class RevokeSequenceUsage(_GrantDDL):
    """A ``DO`` block revoking ``USAGE`` on every sequence the table owns."""


class DatabaseTemporary(DDLElement):
    """``REVOKE`` (or ``GRANT`` back) ``TEMPORARY`` on the current database from ``PUBLIC`` and ``role``.

    Every role holds TEMPORARY through PUBLIC by default; a role without it cannot create temporary
    tables, which are not protected by row level security and outlive the transaction on a pooled
    connection. The database owner keeps it.
    """

    inherit_cache = False

    def __init__(self, role: str, *, allow: bool) -> None:
        self.role = validate_role_name(role)
        self.allow = allow


def _table(compiler: DDLCompiler, element: _TableDDL) -> str:
    preparer = compiler.preparer
    name = preparer.quote(element.table)
    return name if element.schema is None else preparer.quote_schema(element.schema) + "." + name


def _literal(compiler: DDLCompiler, value: str) -> str:
    return str(compiler.sql_compiler.render_literal_value(value, String()))


def _regclass(compiler: DDLCompiler, element: _TableDDL) -> str:
    """SQL resolving the element's table to a regclass (NULL if absent) without quoting names in Python."""
    name = "pg_catalog.quote_ident(" + _literal(compiler, element.table) + ")"
    if element.schema is not None:
        name = "pg_catalog.quote_ident(" + _literal(compiler, element.schema) + ") || '.' || " + name
    return "pg_catalog.to_regclass(" + name + ")"


def _do_block(body: str) -> str:
    _check_dollar_tag(body)  # already refused in every name and password; checked again where it matters
    return "DO " + _DOLLAR_TAG + "\n" + body + "\n" + _DOLLAR_TAG


@compiles(RowLevelSecurity)
def _compile_rls(element: RowLevelSecurity, compiler: DDLCompiler, **kw: Any) -> str:
    return (
        "ALTER TABLE "
        + _table(compiler, element)
        + (" ENABLE" if element.enabled else " DISABLE")
        + (" ROW LEVEL SECURITY")
    )


@compiles(ForceRowLevelSecurity)
def _compile_force(element: ForceRowLevelSecurity, compiler: DDLCompiler, **kw: Any) -> str:
    return (
        "ALTER TABLE "
        + _table(compiler, element)
        + (" FORCE" if element.forced else " NO FORCE")
        + (" ROW LEVEL SECURITY")
    )


@compiles(CreateTenantPolicy)
def _compile_create_policy(element: CreateTenantPolicy, compiler: DDLCompiler, **kw: Any) -> str:
    predicate = tenant_predicate_sql(
        compiler.preparer.quote(element.column), element.setting, element.key_type, citus=element.citus
    )
    return (
        "CREATE POLICY " + compiler.preparer.quote(element.name) + " ON " + _table(compiler, element)
        + " AS PERMISSIVE FOR ALL TO PUBLIC USING (" + predicate + ") WITH CHECK (" + predicate + ")"
    )  # fmt: skip


@compiles(DropTenantPolicy)
def _compile_drop_policy(element: DropTenantPolicy, compiler: DDLCompiler, **kw: Any) -> str:
    return (
        "DROP POLICY IF EXISTS " + compiler.preparer.quote(element.name) + " ON " + _table(compiler, element)
    )


@compiles(EnsureTenantIndex)
def _compile_ensure_index(element: EnsureTenantIndex, compiler: DDLCompiler, **kw: Any) -> str:
    preparer = compiler.preparer
    return _do_block(
        "BEGIN\n"
        "  IF NOT EXISTS (\n"
        "    SELECT FROM pg_catalog.pg_index i\n"
        "      JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]\n"
        "     WHERE i.indrelid = " + _regclass(compiler, element) + "\n"
        "       AND a.attname = " + _literal(compiler, element.column) + " AND i.indpred IS NULL\n"
        "  ) THEN\n"
        "    CREATE INDEX " + preparer.quote(element.name) + " ON " + _table(compiler, element)
        + " (" + preparer.quote(element.column) + ");\n"
        "  END IF;\n"
        "END"
    )  # fmt: skip


@compiles(DropTenantIndex)
def _compile_drop_index(element: DropTenantIndex, compiler: DDLCompiler, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    if element.schema is not None:
        name = compiler.preparer.quote_schema(element.schema) + "." + name
    return "DROP INDEX IF EXISTS " + name


@compiles(EnsureTenantRole)
def _compile_ensure_role(element: EnsureTenantRole, compiler: DDLCompiler, **kw: Any) -> str:
    name = _literal(compiler, element.name)
    attributes = "LOGIN" if element.login else "NOLOGIN"
    attributes += " NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
    if element.password is not None:
        attributes += " PASSWORD " + _literal(compiler, element.password)
    return _do_block(
        "BEGIN\n"  # noqa: S608 - names quoted by the dialect, values rendered as literals
        "  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = " + name + ") THEN\n"
        "    CREATE ROLE " + compiler.preparer.quote(element.name) + " WITH " + attributes + ";\n"
        "  ELSIF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = " + name
        + " AND (rolsuper OR rolbypassrls)) THEN\n"
        "    RAISE EXCEPTION USING MESSAGE = 'pgtenancy: role ' || " + name
        + " || ' exists and is a superuser or has BYPASSRLS, so row level security would not bind it';\n"
        "  END IF;\n"
        "END"
    )  # fmt: skip


@compiles(DropTenantRole)
def _compile_drop_role(element: DropTenantRole, compiler: DDLCompiler, **kw: Any) -> str:
    return "DROP ROLE IF EXISTS " + compiler.preparer.quote(element.name)


@compiles(GrantTableAccess)
def _compile_grant(element: GrantTableAccess, compiler: DDLCompiler, **kw: Any) -> str:
    role = compiler.preparer.quote(element.role)
    return "GRANT " + DML_PRIVILEGES + " ON TABLE " + _table(compiler, element) + " TO " + role


@compiles(RevokeTableAccess)
def _compile_revoke(element: RevokeTableAccess, compiler: DDLCompiler, **kw: Any) -> str:
    role = compiler.preparer.quote(element.role)
    return "REVOKE " + DML_PRIVILEGES + " ON TABLE " + _table(compiler, element) + " FROM " + role


@compiles(RevokeUnsafePrivileges)
def _compile_revoke_unsafe(element: RevokeUnsafePrivileges, compiler: DDLCompiler, **kw: Any) -> str:
    role = compiler.preparer.quote(element.role)
    return "REVOKE " + UNSAFE_PRIVILEGES + " ON TABLE " + _table(compiler, element) + " FROM " + role


@compiles(GrantReadAccess)
def _compile_grant_read(element: GrantReadAccess, compiler: DDLCompiler, **kw: Any) -> str:
    return (
        "GRANT SELECT ON TABLE " + _table(compiler, element) + " TO " + compiler.preparer.quote(element.role)
    )


@compiles(RevokeReadAccess)
def _compile_revoke_read(element: RevokeReadAccess, compiler: DDLCompiler, **kw: Any) -> str:
    role = compiler.preparer.quote(element.role)
    return "REVOKE SELECT ON TABLE " + _table(compiler, element) + " FROM " + role  # noqa: S608 - quoted names


@compiles(GrantSchemaUsage)
def _compile_schema_usage(element: GrantSchemaUsage, compiler: DDLCompiler, **kw: Any) -> str:
    role = compiler.preparer.quote(element.role)
    return "GRANT USAGE ON SCHEMA " + compiler.preparer.quote_schema(element.schema) + " TO " + role


@compiles(RevokeSchemaUsage)
def _compile_revoke_schema_usage(element: RevokeSchemaUsage, compiler: DDLCompiler, **kw: Any) -> str:
    role = compiler.preparer.quote(element.role)
    return "REVOKE USAGE ON SCHEMA " + compiler.preparer.quote_schema(element.schema) + " FROM " + role


@compiles(DatabaseTemporary)
def _compile_database_temporary(element: DatabaseTemporary, compiler: DDLCompiler, **kw: Any) -> str:
    database = "pg_catalog.quote_ident(pg_catalog.current_database())"  # names quoted by PostgreSQL itself
    if element.allow:
        return _do_block(
            "BEGIN\n  EXECUTE 'GRANT TEMPORARY ON DATABASE ' || " + database + " || ' TO PUBLIC';\nEND"
        )
    role = "pg_catalog.quote_ident(" + _literal(compiler, element.role) + ")"
    return _do_block(
        "BEGIN\n"
        "  EXECUTE 'REVOKE TEMPORARY ON DATABASE ' || " + database + " || ' FROM PUBLIC';\n"
        "  EXECUTE 'REVOKE TEMPORARY ON DATABASE ' || " + database + " || ' FROM ' || " + role + ";\n"
        "END"
    )  # fmt: skip


def _sequence_loop(compiler: DDLCompiler, element: _GrantDDL, action: str) -> str:
    """PL/pgSQL looping over the table's owned sequences; names are quoted by PostgreSQL itself."""
    return _do_block(
        "DECLARE\n"  # noqa: S608 - names quoted by the dialect, values rendered as literals
        "  seq regclass;\n"
        "BEGIN\n"
        "  FOR seq IN\n"
        "    SELECT d.objid::regclass FROM pg_catalog.pg_depend d\n"
        "      JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'\n"
        "     WHERE d.classid = 'pg_catalog.pg_class'::regclass\n"
        "       AND d.refclassid = 'pg_catalog.pg_class'::regclass\n"
        "       AND d.refobjid = " + _regclass(compiler, element) + " AND d.deptype IN ('a', 'i')\n"
        "  LOOP\n"
        "    EXECUTE " + action + ";\n"
        "  END LOOP;\n"
        "END"
    )  # fmt: skip


@compiles(GrantSequenceUsage)
def _compile_grant_sequences(element: GrantSequenceUsage, compiler: DDLCompiler, **kw: Any) -> str:
    role = "pg_catalog.quote_ident(" + _literal(compiler, element.role) + ")"
    return _sequence_loop(compiler, element, "'GRANT USAGE ON SEQUENCE ' || seq::text || ' TO ' || " + role)


@compiles(RevokeSequenceUsage)
def _compile_revoke_sequences(element: RevokeSequenceUsage, compiler: DDLCompiler, **kw: Any) -> str:
    role = "pg_catalog.quote_ident(" + _literal(compiler, element.role) + ")"
    return _sequence_loop(
        compiler, element, "'REVOKE USAGE ON SEQUENCE ' || seq::text || ' FROM ' || " + role
    )


def enable_statements(
    table: str,
    column: str = "tenant_id",
    schema: str | None = None,
    *,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    citus: bool = False,
) -> list[DDLElement]:
    """ENABLE + FORCE RLS, (re)create the tenant policy, and index the tenant column if nothing does."""
    return [
        RowLevelSecurity(table, schema, enabled=True),
        ForceRowLevelSecurity(table, schema, forced=True),
        DropTenantPolicy(table, schema),
        CreateTenantPolicy(table, column, schema, key_type=key_type, setting=setting, citus=citus),
        EnsureTenantIndex(table, column, schema),
    ]


def disable_statements(
    table: str,
    column: str = "tenant_id",
    schema: str | None = None,
    *,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    citus: bool = False,
) -> list[DDLElement]:
    """The exact reverse of ``enable_statements``: drop pgtenancy's index and policy, NO FORCE, DISABLE."""
    validate_setting_name(setting)
    sql_type_name(key_type)
    return [
        DropTenantIndex(table, column, schema),
        DropTenantPolicy(table, schema),
        ForceRowLevelSecurity(table, schema, forced=False),
        RowLevelSecurity(table, schema, enabled=False),
    ]


def create_role_statements(name: str, *, login: bool = True, password: str | None = None) -> list[DDLElement]:
    """Create a role that row-level security binds, unless it already exists (and is safe)."""
    return [EnsureTenantRole(name, login=login, password=password)]


def drop_role_statements(name: str) -> list[DDLElement]:
    """Drop the role if it exists (revoke its grants first: a role holding privileges cannot be dropped)."""
    return [DropTenantRole(name)]


def grant_statements(role: str, table: str, schema: str | None = None) -> list[DDLElement]:
    """DML on the table and USAGE on its sequences for ``role``; TRUNCATE, REFERENCES, TRIGGER revoked."""
    return [
        GrantTableAccess(role, table, schema),
        RevokeUnsafePrivileges(role, table, schema),
        GrantSequenceUsage(role, table, schema),
    ]


def revoke_statements(role: str, table: str, schema: str | None = None) -> list[DDLElement]:
    """The reverse of ``grant_statements``: revoke USAGE on the table's sequences and DML on the table."""
    return [RevokeSequenceUsage(role, table, schema), RevokeTableAccess(role, table, schema)]


def temporary_statements(role: str, *, allow: bool) -> list[DDLElement]:
    """Take ``TEMPORARY`` on the current database away from ``role`` (and ``PUBLIC``), or give it back."""
    return [DatabaseTemporary(role, allow=allow)]
