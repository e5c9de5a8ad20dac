"""Citus distribution of tenant tables: idempotent ``create_distributed_table`` and friends.

Each ``*_sql`` builder returns one guarded statement (it does nothing when the table already has the
wanted distribution), so it is safe to run twice and can be rendered with ``literal_binds`` for an
offline migration script. The functions taking a ``Connection`` first check that Citus is there and
that the table is not distributed in a conflicting way, then run the statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from sqlalchemy import Connection, String, TextClause, bindparam, text
from sqlalchemy.dialects import postgresql

from pgtenancy.errors import TenancyError

__all__ = [
    "CitusDistributionError",
    "CitusNotAvailableError",
    "Distribution",
    "citus_version",
    "create_distributed_table",
    "create_reference_table",
    "distributed_table_sql",
    "distribution_of",
    "qualified_name",
    "reference_table_sql",
    "require_citus",
    "undistribute_table",
    "undistribute_table_sql",
]

DistributionKind = Literal["distributed", "reference", "local"]

_PREPARER: Final = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
_DEFAULT_COLOCATION: Final = "default"  # Citus' own default: co-locate with tables of the same column type
_NOT_DISTRIBUTED: Final = (
    "NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = CAST(:table AS regclass))"
)

_DISTRIBUTE = text(
    "SELECT create_distributed_table(CAST(:table AS regclass), :column, colocate_with => :colocate_with) "
    "WHERE " + _NOT_DISTRIBUTED
)
_REFERENCE = text("SELECT create_reference_table(CAST(:table AS regclass)) WHERE " + _NOT_DISTRIBUTED)
_UNDISTRIBUTE = text(
    "SELECT undistribute_table(CAST(:table AS regclass)) "
    "WHERE EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = CAST(:table AS regclass))"
)
_VERSION = text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
_DISTRIBUTION = text(
    "SELECT p.partmethod, p.repmodel, column_to_column_name(p.logicalrelid, p.partkey) "
    "FROM pg_dist_partition p WHERE p.logicalrelid = CAST(:table AS regclass)"
)
_EXISTS = text("SELECT to_regclass(:table) IS NOT NULL")


class CitusNotAvailableError(TenancyError):
    """The database has no Citus extension, so tables cannot be distributed there."""


class CitusDistributionError(TenancyError):
    """A table is missing, or already distributed in a way the requested operation would contradict."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """How Citus holds a table: hash-``distributed`` by ``column``, a ``reference`` table, or ``local``."""

    kind: DistributionKind
    column: str | None = None


def qualified_name(table: str, schema: str | None = None) -> str:
    """``table`` (in ``schema``) as a quoted SQL name, the text form ``regclass`` parses."""
    for name, what in ((table, "table"), (schema, "schema")):
        if name is not None and (not isinstance(name, str) or not name or "\x00" in name):
            raise CitusDistributionError(f"invalid {what} name {name!r}: give a non-empty string")
    quoted = _PREPARER.quote(table)
    return quoted if schema is None else _PREPARER.quote_schema(schema) + "." + quoted


def distributed_table_sql(
    table: str, column: str = "tenant_id", *, schema: str | None = None, colocate_with: str | None = None
) -> TextClause:
    """``SELECT create_distributed_table(...)`` unless the table is already in ``pg_dist_partition``.

    :param column: the distribution column: the tenant column, so one tenant's rows share a shard.
    :param colocate_with: a table of the same schema to co-locate with, ``"none"`` for a new
        co-location group, or ``None`` for Citus' default (tables with the same column type).
    """
    if not isinstance(column, str) or not column:
        raise CitusDistributionError(f"invalid distribution column {column!r}: give a column name")
    colocation = _DEFAULT_COLOCATION if colocate_with is None else _colocation(colocate_with, schema)
    return _DISTRIBUTE.bindparams(
        bindparam("table", qualified_name(table, schema), type_=String),
        bindparam("column", column, type_=String),
        bindparam("colocate_with", colocation, type_=String),
    )


def reference_table_sql(table: str, *, schema: str | None = None) -> TextClause:
    """``SELECT create_reference_table(...)`` (a copy on every node) unless the table is already Citus'."""
    return _REFERENCE.bindparams(bindparam("table", qualified_name(table, schema), type_=String))


def undistribute_table_sql(table: str, *, schema: str | None = None) -> TextClause:
    """``SELECT undistribute_table(...)`` (back to a plain local table) if the table is Citus'."""
    return _UNDISTRIBUTE.bindparams(bindparam("table", qualified_name(table, schema), type_=String))


def _colocation(colocate_with: str, schema: str | None) -> str:
    if colocate_with == "none":
        return colocate_with
    return qualified_name(colocate_with, schema)


def citus_version(conn: Connection) -> str | None:
    """The version of the Citus extension created in this database, or ``None`` without Citus."""
    return conn.execute(_VERSION).scalar_one_or_none()


def require_citus(conn: Connection) -> str:
    """The Citus extension version; raises ``CitusNotAvailableError`` on a database without it."""
    version = citus_version(conn)
    if version is None:
        raise CitusNotAvailableError(
            "this database has no Citus extension: load it with shared_preload_libraries = 'citus' "
            "and run CREATE EXTENSION citus on the coordinator and every worker"
        )
    return version


def distribution_of(conn: Connection, table: str, *, schema: str | None = None) -> Distribution | None:
    """How Citus holds ``table``, or ``None`` for a plain table (raises if Citus or the table is missing)."""
    require_citus(conn)
    name = qualified_name(table, schema)
    if not conn.execute(_EXISTS, {"table": name}).scalar_one():
        raise CitusDistributionError(f"table {name} does not exist")
    row = conn.execute(_DISTRIBUTION, {"table": name}).one_or_none()
    if row is None:
        return None
    method, replication, column = row
    if method == "h":
        return Distribution("distributed", column)
    return Distribution("reference" if replication == "t" else "local")


def create_distributed_table(
    conn: Connection,
    table: str,
    column: str = "tenant_id",
    *,
    schema: str | None = None,
    colocate_with: str | None = None,
) -> bool:
    """Hash-distribute ``table`` by ``column``; ``False`` (nothing done) if it already is.

    Emits ``SELECT create_distributed_table(table, column, colocate_with => ...)``, guarded.

    :raises CitusDistributionError: the table is a reference table or distributed by another column.
    """
    statement = distributed_table_sql(table, column, schema=schema, colocate_with=colocate_with)
    current = distribution_of(conn, table, schema=schema)
    if current == Distribution("distributed", column):
        return False
    if current is not None:
        raise CitusDistributionError(
            f"{qualified_name(table, schema)} is already a {current.kind} table"
            + (f" distributed by {current.column!r}" if current.column else "")
            + f", not distributed by {column!r}: run undistribute_table() first"
        )
    conn.execute(statement)
    return True


def create_reference_table(conn: Connection, table: str, *, schema: str | None = None) -> bool:
    """Make ``table`` a reference table (replicated to every node); ``False`` if it already is.

    Emits ``SELECT create_reference_table(table)``, guarded.

    :raises CitusDistributionError: the table is hash-distributed (or a Citus local table).
    """
    statement = reference_table_sql(table, schema=schema)
    current = distribution_of(conn, table, schema=schema)
    if current == Distribution("reference"):
        return False
    if current is not None:
        raise CitusDistributionError(
            f"{qualified_name(table, schema)} is already a {current.kind} table: "
            "run undistribute_table() first"
        )
    conn.execute(statement)
    return True


def undistribute_table(conn: Connection, table: str, *, schema: str | None = None) -> bool:
    """Turn a distributed or reference ``table`` back into a plain table; ``False`` if it already is one.

    Emits ``SELECT undistribute_table(table)``, guarded.
    """
    statement = undistribute_table_sql(table, schema=schema)
    if distribution_of(conn, table, schema=schema) is None:
        return False
    conn.execute(statement)
    return True
