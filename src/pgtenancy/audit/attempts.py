"""Probe statements sent straight through the driver's cursor, each in a savepoint of the audit's transaction.

A probe is many small statements per table (a savepoint, the attempt, its rollback); through
SQLAlchemy's ``Connection`` each costs several times what PostgreSQL spends on it. The statements are
built with SQLAlchemy, rendered once with their values as literals (the dialect's ``named`` paramstyle,
so a ``%`` stays a ``%``), and run on the DBAPI cursor of the same connection, inside the transaction
SQLAlchemy began: nothing is committed, and a refused attempt leaves the transaction usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.dialects import postgresql

__all__ = ["DIALECT", "Attempts", "Failure", "render"]

DIALECT = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
_SAVEPOINT = "SAVEPOINT pgtenancy_probe"
_UNDO = "ROLLBACK TO SAVEPOINT pgtenancy_probe; RELEASE SAVEPOINT pgtenancy_probe"  # no nesting builds up
_KEEP = "RELEASE SAVEPOINT pgtenancy_probe"


def render(statement: Executable) -> str:
    """``statement`` as SQL text with its values inlined as quoted literals."""
    compiled = statement.compile(dialect=DIALECT, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    return str(compiled)


@dataclass(frozen=True)
class Failure:
    """Why PostgreSQL refused an attempt: its SQLSTATE, the constraint named (if any), the first line."""

    sqlstate: str
    constraint: str
    message: str


class Attempts:
    """Runs statements on ``conn``'s driver connection, in ``conn``'s open transaction."""

    def __init__(self, conn: Connection) -> None:
        self._cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        self._error: type[Exception] = conn.dialect.loaded_dbapi.Error

    def run(self, statement: Executable | str) -> list[tuple[Any, ...]]:
        """Run a statement that must not fail (a role switch, a setting) outside any savepoint: its rows."""
        cursor = self._cursor
        cursor.execute(statement if isinstance(statement, str) else render(statement))
        return [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []

    def rows(
        self, statement: Executable | str, *, keep: bool = False
    ) -> list[tuple[Any, ...]] | int | Failure:
        """Run ``statement`` in a savepoint, rolled back unless ``keep``: the rows it returned, the number
        of rows it wrote (``1`` for a utility statement), or the ``Failure``."""
        cursor = self._cursor
        cursor.execute(_SAVEPOINT)
        try:
            cursor.execute(statement if isinstance(statement, str) else render(statement))
            if cursor.description is not None:
                outcome: list[tuple[Any, ...]] | int = [tuple(row) for row in cursor.fetchall()]
            else:
                outcome = cursor.rowcount if cursor.rowcount >= 0 else 1
        except self._error as error:
            cursor.execute(_UNDO)
            return _failure(error)
        cursor.execute(_KEEP if keep else _UNDO)
        return outcome


def _failure(error: Exception) -> Failure:
    """The SQLSTATE, constraint and message of a psycopg (or psycopg2) error."""
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or ""
    diag = getattr(error, "diag", None)
    constraint = getattr(diag, "constraint_name", None) or ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Failure(str(state), str(constraint), message)
