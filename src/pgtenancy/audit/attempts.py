"""Probe statements sent straight through psycopg's cursor, each in a savepoint of the audit's transaction.

A probe is many small statements per table; through SQLAlchemy's ``Connection``, and with a round trip
each for the savepoint, the attempt and its rollback, they cost several times what PostgreSQL spends
on them. Here each attempt is one round trip: the previous attempt's rollback, a new savepoint and the
statement travel as one simple-protocol message. The statements are SQL text whose names are quoted by
SQLAlchemy's identifier preparer and whose values are SQLAlchemy's PostgreSQL string literals; they run
inside the transaction SQLAlchemy began, so nothing is committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Executable, String
from sqlalchemy.dialects import postgresql

__all__ = ["DIALECT", "Attempts", "Failure", "insert", "literal", "qualified", "quote", "render"]

DIALECT: Final = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
_PREPARER: Final = DIALECT.identifier_preparer
_LITERAL: Final = String().literal_processor(DIALECT)  # type: ignore[no-untyped-call]
_BEGIN: Final = "SAVEPOINT pgtenancy_probe; "
_UNDO: Final = "ROLLBACK TO SAVEPOINT pgtenancy_probe; RELEASE SAVEPOINT pgtenancy_probe; "
_KEEP: Final = "RELEASE SAVEPOINT pgtenancy_probe; "


def render(statement: Executable) -> str:
    """A SQLAlchemy statement as SQL text with its values inlined as quoted literals (``%`` stays ``%``)."""
    compiled = statement.compile(dialect=DIALECT, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    return str(compiled)


def quote(name: str) -> str:
    """An identifier, quoted where PostgreSQL needs it."""
    return str(_PREPARER.quote(name))


def qualified(schema: str, name: str) -> str:
    """``schema.name``, each part quoted where needed."""
    return str(_PREPARER.quote_schema(schema)) + "." + quote(name)


def literal(value: str) -> str:
    """A string literal of no declared type: PostgreSQL gives it the type of what it meets."""
    return str(_LITERAL(value))


def insert(table: str, values: Mapping[str, str]) -> str:
    """INSERT of one row into ``table`` (already quoted); the values are literals of no declared type."""
    if not values:
        return " ".join(("INSERT INTO", table, "DEFAULT VALUES"))
    names = ", ".join(quote(name) for name in values)
    row = ", ".join(literal(value) for value in values.values())
    return " ".join(("INSERT INTO", table, "(" + names + ") VALUES (" + row + ")"))


@dataclass(frozen=True)
class Failure:
    """Why PostgreSQL refused an attempt: its SQLSTATE, the constraint named (if any), the first line."""

    sqlstate: str
    constraint: str
    message: str


class Attempts:
    """Runs statements on ``conn``'s psycopg connection, in ``conn``'s open transaction.

    After an attempt its savepoint is still open (rolled back or kept) until the next statement, which
    closes it in the same message: call nothing on ``conn`` itself until the transaction ends.
    """

    def __init__(self, conn: Connection, *, citus: bool = False) -> None:
        """:param citus: send savepoints in messages of their own: Citus loses a worker connection when a
        savepoint travels in one message with other statements."""
        self._cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._error: type[Exception] = conn.dialect.loaded_dbapi.Error
        self._pending = ""  # how the previous attempt's savepoint is to be closed
        self._citus = citus

    def _send(self, sql: str) -> Any:
        """Send the pending close and ``sql`` in one message; the cursor is left on ``sql``'s result."""
        cursor = self._cursor
        if self._citus and self._pending:
            cursor.execute(self._pending)
            self._pending = ""
        text, self._pending = self._pending + sql, ""
        cursor.execute(text)
        while cursor.nextset():
            pass
        return cursor

    def run(self, statement: Executable | str) -> list[tuple[Any, ...]]:
        """Run a statement that must not fail (a role switch, a setting), outside any savepoint: its rows."""
        cursor = self._send(statement if isinstance(statement, str) else render(statement))
        return [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []

    def rows(
        self, statement: Executable | str, *, keep: bool = False
    ) -> list[tuple[Any, ...]] | int | Failure:
        """Run ``statement`` in a savepoint, rolled back unless ``keep``: the rows it returned, the number
        of rows it wrote (``1`` for a utility statement), or the ``Failure``."""
        sql = statement if isinstance(statement, str) else render(statement)
        if self._citus:
            self._send(_BEGIN)
        try:
            cursor = self._send(sql if self._citus else _BEGIN + sql)
        except self._error as error:
            self._pending = _UNDO
            return _failure(error)
        self._pending = _KEEP if keep else _UNDO
        if cursor.description is not None:
            return [tuple(row) for row in cursor.fetchall()]
        return int(cursor.rowcount) if cursor.rowcount >= 0 else 1


def _failure(error: Exception) -> Failure:
    """The SQLSTATE, constraint and first line of a psycopg error."""
    diag = getattr(error, "diag", None)
    lines = str(error).strip().splitlines()
    return Failure(
        str(getattr(error, "sqlstate", "") or ""),
        str(getattr(diag, "constraint_name", "") or ""),
        lines[0] if lines else type(error).__name__,
    )
