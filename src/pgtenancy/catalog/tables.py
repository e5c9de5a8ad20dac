"""Typed readers of the PostgreSQL catalog: RLS flags, policies, roles, privileges, indexes, columns.

Every reader takes a SQLAlchemy ``Connection`` and names passed as bind parameters; a table is
found the way SQL would find it (``schema=None`` follows the ``search_path``). Readers return
``None`` (or an empty collection) for objects that do not exist rather than raising. A table is
looked up once by name, then read by oid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

from pgtenancy.errors import ConfigurationError

__all__ = [
    "AccessGap",
    "PolicyInfo",
    "RoleInfo",
    "SchemaMismatchError",
    "TableSecurity",
    "column_type",
    "indexes_leading_with",
    "missing_access",
    "owned_sequences",
    "role_info",
    "sequence_privileges",
    "table_policies",
    "table_privileges",
    "table_security",
]

# The table's oid, resolved like SQL resolves a (possibly schema-qualified) name; NULL when absent.
_TABLE_OID = text(
    "SELECT pg_catalog.to_regclass(CASE WHEN CAST(:schema AS text) IS NULL "
    "THEN pg_catalog.quote_ident(:table) "
    "ELSE pg_catalog.quote_ident(:schema) || '.' || pg_catalog.quote_ident(:table) END)::oid"
)
_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


class SchemaMismatchError(ConfigurationError):
    """The live database does not match what an operation expects (unknown table, column, role, type)."""


@dataclass(frozen=True, slots=True)
class TableSecurity:
    """A table's row-level security flags (``pg_class.relrowsecurity`` / ``relforcerowsecurity``)."""

    schema: str
    name: str
    owner: str
    rls_enabled: bool
    rls_forced: bool


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One row-level security policy; expressions as PostgreSQL prints them (``pg_get_expr``)."""

    name: str
    permissive: bool
    command: str  # ALL, SELECT, INSERT, UPDATE or DELETE
    roles: tuple[str, ...]  # ("public",) when the policy applies to every role
    using: str | None
    with_check: str | None


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """The attributes of a role that decide whether row-level security binds it (``pg_roles``)."""

    name: str
    superuser: bool
    bypassrls: bool
    createdb: bool
    createrole: bool
    replication: bool
    login: bool


def _table_oid(conn: Connection, table: str, schema: str | None) -> int | None:
    """The oid of ``table`` (found through the ``search_path`` when ``schema`` is None), or None."""
    oid: int | None = conn.execute(_TABLE_OID, {"table": table, "schema": schema}).scalar_one()
    return oid


_TABLE_SECURITY = text(
    "SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner), c.relrowsecurity, "
    "c.relforcerowsecurity FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = :oid"
)


def table_security(conn: Connection, table: str, schema: str | None = None) -> TableSecurity | None:
    """Whether RLS is enabled and forced on ``table``, or ``None`` if there is no such table."""
    row = conn.execute(_TABLE_SECURITY, {"oid": _table_oid(conn, table, schema)}).one_or_none()
    return None if row is None else TableSecurity(*row)


_POLICIES = text(
    "SELECT p.polname, p.polpermissive, p.polcmd::text, "
    "ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r) END "
    "FROM unnest(p.polroles) AS r ORDER BY 1), "
    "pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) "
    "FROM pg_catalog.pg_policy p WHERE p.polrelid = :oid ORDER BY p.polname"
)


def table_policies(conn: Connection, table: str, schema: str | None = None) -> list[PolicyInfo]:
    """Every policy on ``table`` (none if the table does not exist), ordered by name.

    The expressions are PostgreSQL's own normalized text, so two policies written differently
    but parsed alike compare equal.
    """
    return [
        PolicyInfo(name, permissive, _COMMANDS[cmd], tuple(roles), using, check)
        for name, permissive, cmd, roles, using, check in conn.execute(
            _POLICIES, {"oid": _table_oid(conn, table, schema)}
        )
    ]


_ROLE = text(
    "SELECT rolname, rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolreplication, rolcanlogin "
    "FROM pg_catalog.pg_roles WHERE rolname = :name"
)


def role_info(conn: Connection, name: str) -> RoleInfo | None:
    """The attributes of role ``name``, or ``None`` if it does not exist."""
    row = conn.execute(_ROLE, {"name": name}).one_or_none()
    return None if row is None else RoleInfo(*row)


_TABLE_PRIVILEGES = text(
    "SELECT a.privilege_type FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a "
    "WHERE c.oid = :oid AND a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = :role)"
)


def table_privileges(conn: Connection, role: str, table: str, schema: str | None = None) -> frozenset[str]:
    """The privileges granted directly to ``role`` on ``table`` (not via PUBLIC or role membership)."""
    rows = conn.execute(_TABLE_PRIVILEGES, {"oid": _table_oid(conn, table, schema), "role": role}).scalars()
    return frozenset(rows)


_OWNED_SEQUENCES = text(
    "SELECT d.objid::regclass::text FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
    "WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass "
    "AND d.refobjid = :oid AND d.deptype IN ('a', 'i') ORDER BY 1"
)


def owned_sequences(conn: Connection, table: str, schema: str | None = None) -> list[str]:
    """The sequences owned by ``table``'s serial and identity columns, as (quoted) regclass text."""
    return list(conn.execute(_OWNED_SEQUENCES, {"oid": _table_oid(conn, table, schema)}).scalars())


_SEQUENCE_PRIVILEGES = text(
    "SELECT a.privilege_type FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a "
    "WHERE c.oid = pg_catalog.to_regclass(:sequence) "
    "AND a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = :role)"
)


def sequence_privileges(conn: Connection, role: str, sequence: str) -> frozenset[str]:
    """The privileges granted directly to ``role`` on ``sequence`` (regclass text, as ``owned_sequences``)."""
    return frozenset(conn.execute(_SEQUENCE_PRIVILEGES, {"role": role, "sequence": sequence}).scalars())


@dataclass(frozen=True, slots=True)
class AccessGap:
    """What a role cannot use on a table: table privileges it lacks, owned sequences it may not use."""

    privileges: tuple[str, ...]  # of the privileges asked about, in the order asked
    sequences: tuple[str, ...]  # owned sequences without USAGE, as (quoted) regclass text

    @property
    def complete(self) -> bool:
        """Whether nothing is missing."""
        return not self.privileges and not self.sequences


# Effective rights, as the role's statements would have them (PUBLIC, inherited memberships, ownership).
_MISSING_ACCESS = text(
    "SELECT ARRAY(SELECT p.privilege "
    "FROM unnest(CAST(:privileges AS text[])) WITH ORDINALITY AS p(privilege, n) "
    "WHERE NOT pg_catalog.has_table_privilege(r.oid, CAST(:oid AS oid), p.privilege) ORDER BY p.n), "
    "ARRAY(SELECT d.objid::regclass::text FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
    "WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass "
    "AND d.refobjid = CAST(:oid AS oid) AND d.deptype IN ('a', 'i') "
    "AND CASE WHEN s.relkind = 'S' THEN NOT pg_catalog.has_sequence_privilege(r.oid, s.oid, 'USAGE') END "
    "ORDER BY 1) "  # CASE: a plan may test a row before its join, and the function fails on non-sequences
    "FROM pg_catalog.pg_roles r WHERE r.rolname = :role"
)


def missing_access(
    conn: Connection, role: str, table: str, privileges: Sequence[str], schema: str | None = None
) -> AccessGap | None:
    """Which of ``privileges`` on ``table`` (and USAGE on its owned sequences) ``role`` cannot use.

    Rights are effective ones, as ``has_table_privilege`` sees them, so a grant to a group role the
    role inherits from counts. ``None`` if the role does not exist; nothing is missing on a missing table.
    """
    row = conn.execute(
        _MISSING_ACCESS,
        {"privileges": list(privileges), "oid": _table_oid(conn, table, schema), "role": role},
    ).one_or_none()
    return None if row is None else AccessGap(tuple(row[0]), tuple(row[1]))


_LEADING_INDEXES = text(
    "SELECT ic.relname FROM pg_catalog.pg_index i "
    "JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
    "WHERE i.indrelid = :oid AND a.attname = :column AND i.indpred IS NULL ORDER BY 1"
)


def indexes_leading_with(conn: Connection, table: str, column: str, schema: str | None = None) -> list[str]:
    """The names of the non-partial indexes on ``table`` whose first key is ``column``."""
    return list(
        conn.execute(_LEADING_INDEXES, {"oid": _table_oid(conn, table, schema), "column": column}).scalars()
    )


_COLUMN_TYPE = text(
    "SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = :oid AND a.attname = :column AND a.attnum > 0 AND NOT a.attisdropped"
)


def column_type(conn: Connection, table: str, column: str, schema: str | None = None) -> str | None:
    """The type of ``table.column`` without modifiers (``uuid``, ``bigint``, ``text`` ...) or ``None``."""
    return conn.execute(
        _COLUMN_TYPE, {"oid": _table_oid(conn, table, schema), "column": column}
    ).scalar_one_or_none()
