"""psycopg 3 (sync and async): the tenant rides on psycopg's own BEGIN, checked under psycopg's lock.

psycopg sends ``BEGIN`` from ``_start_query``, which every statement of a cursor (execute, executemany,
stream, copy, server-side cursors) passes through while it holds the connection's lock. pgtenancy gives
the connection a subclass whose ``_start_query`` sends the tenant with that BEGIN and checks every
statement sent inside the transaction against the tenant it carries.

Private names relied on (verified with psycopg 3.1.8 and 3.3.9, SQLAlchemy 2.0.50, 2.0.58 and 2.1.9):

- psycopg's ``BaseConnection``: ``_start_query``, ``_get_tx_start_command``, ``_exec_command``,
  ``_pipeline`` and ``_autocommit``; ``Cursor._conn``;
- SQLAlchemy's ``AsyncAdapt_psycopg_connection._connection``; ``AsyncAdapt_psycopg_cursor._connection``
  (2.1) or ``AsyncAdapt_psycopg_cursor._cursor`` (2.0, psycopg's cursor).
"""

from __future__ import annotations

import operator
from typing import Any, Final

from sqlalchemy import Dialect

from pgtenancy.drivers.state import RESET_SESSION, ConnectionState
from pgtenancy.errors import ConfigurationError

__all__ = [
    "NAME",
    "PRIVATE_NAMES",
    "VERIFIED",
    "arm",
    "autocommit_getter",
    "available",
    "backend_pid",
    "connect",
    "in_transaction",
    "state_getter",
]

NAME: Final = "psycopg"
PRIVATE_NAMES: Final = (
    "psycopg BaseConnection._start_query",
    "psycopg BaseConnection._get_tx_start_command",
    "psycopg BaseConnection._exec_command",
    "psycopg BaseConnection._pipeline",
    "psycopg BaseConnection._autocommit",
    "psycopg Cursor._conn",
    "sqlalchemy AsyncAdapt_psycopg_connection._connection",
    "sqlalchemy AsyncAdapt_psycopg_cursor._connection (2.1) / _cursor (2.0)",
)
VERIFIED: Final = {"sqlalchemy": ("2.0.50", "2.1.9"), "psycopg": ("3.1.8", "3.3.9")}
"""The oldest and newest releases the names above were verified in, per distribution."""
_HOOKS: Final = ("_start_query", "_get_tx_start_command", "_exec_command")
_subclasses: dict[type, type] = {}


def available(dialect: Dialect) -> str | None:
    """``None`` when the class-level names above exist in the installed psycopg and SQLAlchemy, else what is
    missing (the instance attributes are checked on each connection as it is armed)."""
    import psycopg

    missing = [name for name in _HOOKS if not hasattr(psycopg.Connection, name)]
    if dialect.is_async and _cursor_path(dialect) is None:
        missing.append("AsyncAdapt_psycopg_cursor._connection (2.1) or ._cursor (2.0)")
    return ", ".join(missing) or None


def _cursor_path(dialect: Dialect) -> str | None:
    """Where psycopg's connection sits on the DBAPI cursors of ``dialect``."""
    if not dialect.is_async:
        return "_conn"  # psycopg's own cursor
    from sqlalchemy.dialects.postgresql.psycopg import AsyncAdapt_psycopg_cursor

    slots = {slot for cls in AsyncAdapt_psycopg_cursor.__mro__ for slot in getattr(cls, "__slots__", ())}
    if "_connection" in slots:  # SQLAlchemy 2.1: the adapted cursor keeps the connection
        return "_connection"
    if "_cursor" in slots:  # SQLAlchemy 2.0: it wraps psycopg's cursor
        return "_cursor._conn"
    return None


def state_getter(dialect: Dialect) -> Any:
    """Reads the ``ConnectionState`` of psycopg's connection from a DBAPI cursor of ``dialect``, in C."""
    return operator.attrgetter(f"{_cursor_path(dialect)}._pgtenancy")


def autocommit_getter(dialect: Dialect) -> tuple[Any, object]:
    """Reads psycopg's autocommit flag from a DBAPI cursor of ``dialect``, and its autocommit value."""
    return operator.attrgetter(f"{_cursor_path(dialect)}._autocommit"), True


def connect(dialect: Dialect, make: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    """SQLAlchemy's own connect, making psycopg connections of pgtenancy's subclass from the start.

    (A connection given the subclass after it was made keeps working, but CPython's attribute caches then
    miss on it: ~20k more instructions per transaction, measured.) Sync psycopg takes no class parameter,
    so its connection is made here, the way SQLAlchemy's dialect would.
    """
    import psycopg

    if dialect.is_async:
        cparams.setdefault("async_creator_fn", _tenant_aware(psycopg.AsyncConnection).connect)
        return make(*cargs, **cparams)
    return _tenant_aware(psycopg.Connection).connect(*cargs, **cparams)


def _driver(dbapi_connection: Any) -> Any:
    return getattr(dbapi_connection, "_connection", dbapi_connection)  # async: behind SQLAlchemy's adapter


def in_transaction(dbapi_connection: Any) -> bool:
    """Whether libpq reports a transaction open (or a query in flight) on the connection."""
    return bool(_driver(dbapi_connection).pgconn.transaction_status)


def backend_pid(dbapi_connection: Any) -> int:
    """The backend pid libpq was told when it connected (``ConnectionInfo.backend_pid``)."""
    return int(_driver(dbapi_connection).info.backend_pid)


def arm(dbapi_connection: Any, state: ConnectionState) -> None:
    """Govern psycopg's connection by ``state``: its BEGINs carry the tenant, statements are checked."""
    driver = _driver(dbapi_connection)
    absent = [name for name in ("_pipeline", "_autocommit", "pgconn") if not hasattr(driver, name)]
    if absent:
        raise ConfigurationError(
            f"this psycopg has no {', '.join(absent)} on its connections; cannot govern them"
        )
    cls = type(driver)
    if cls not in _subclasses.values():
        try:
            driver.__class__ = _tenant_aware(cls)
        except TypeError as error:
            raise ConfigurationError(
                f"cannot instrument connections of class {cls.__qualname__}: {error}"
            ) from error
    driver._pgtenancy = state


def _tenant_aware(base: type[Any]) -> type[Any]:
    """A subclass of psycopg's (Async)Connection ``base``: ``_start_query`` carries and checks the tenant."""
    subclass = _subclasses.get(base)
    if subclass is not None:
        return subclass
    from psycopg import errors, generators, pq

    idle, fatal = pq.TransactionStatus.IDLE, pq.ExecStatus.FATAL_ERROR
    reset = tuple(statement.encode() for statement in RESET_SESSION)

    class TenantAwarePsycopg(base):  # type: ignore[misc]
        _pgtenancy: ConnectionState | None = None

        def _start_query(self) -> Any:
            state = self._pgtenancy
            if state is None or self._autocommit:
                return (yield from super()._start_query())  # not governed, or no BEGIN (refused above us)
            if self.pgconn.transaction_status != idle:
                state.check_opened()
                return None
            reset_sql, apply, seal = state.begin()
            if reset_sql is not None:
                for statement in reset:
                    yield from self._exec_command(statement)
            if apply is None:
                return (yield from super()._start_query())
            try:
                if self._pipeline or state.tenancy.separate:  # pipeline mode queues one command at a time
                    yield from super()._start_query()
                    yield from self._exec_command(apply.encode())
                    if seal is not None:
                        yield from self._exec_command(seal.encode())
                    return None
                if seal is not None:
                    apply = f"{apply}; {seal}"
                self.pgconn.send_query(self._get_tx_start_command() + b"; " + apply.encode())
                for result in (yield from generators.execute(self.pgconn)):
                    if result.status == fatal:
                        raise errors.error_from_result(result, encoding=self.info.encoding)
            except BaseException:
                state.failed()  # a transaction it opened carries no tenant: its statements are refused
                raise
            return None

    subclass = _subclasses[base] = TenantAwarePsycopg
    return subclass
