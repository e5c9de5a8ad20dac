"""Sending the tenant with the transaction's own BEGIN, so binding costs no extra round trip.

asyncpg: connections are made from a ``Connection`` subclass (asyncpg's documented
``connection_class``) whose ``execute`` appends a pending ``SET LOCAL`` to the ``BEGIN`` that
SQLAlchemy's adapter sends before the transaction's first statement, as one simple-query message.

psycopg 3 (sync and async): connections are made from a subclass that sends its ``BEGIN`` and the
pending ``SET LOCAL`` as one simple-query message. psycopg has no public hook for its BEGIN, so this
overrides its ``_start_query``; where that method is missing (another psycopg), pgtenancy falls
back to a separate statement rather than guess.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from sqlalchemy import Dialect, String

from pgtenancy.errors import ConfigurationError

__all__ = [
    "APPLIED",
    "NOT_TRACKED",
    "PENDING",
    "READY",
    "Access",
    "Queue",
    "access",
    "prepare_connect",
    "set_local_renderer",
    "supports_begin",
]

PENDING: Final = "_pgtenancy_begin_suffix"
"""Driver-connection attribute: ``(queue, suffix, record)`` for the next BEGIN to send and mark."""
APPLIED: Final = "_pgtenancy_applied"
"""Driver-connection attribute: the record of the transaction its last BEGIN opened (``None``: nothing)."""
READY: Final = "_pgtenancy_ready"
"""Driver-connection attribute, set once the pool has made the connection: SQLAlchemy's own set-up is over."""
_subclasses: dict[type, type] = {}


_PSYCOPG_HOOKS = ("_start_query", "_get_tx_start_command", "_exec_command")


def supports_begin(dialect: Dialect) -> bool:
    """Whether pgtenancy can send the tenant with BEGIN on this dialect's driver.

    Checks, besides the driver's hooks, the attributes ``access()`` reads, so that another
    SQLAlchemy or driver version falls back to engine events instead of failing at the first statement.
    """
    if dialect.driver == "asyncpg":
        from sqlalchemy.dialects.postgresql.asyncpg import (
            AsyncAdapt_asyncpg_connection,
            AsyncAdapt_asyncpg_cursor,
        )

        return _has_slots(AsyncAdapt_asyncpg_cursor, "_connection", "_adapt_connection") and _has_slots(
            AsyncAdapt_asyncpg_connection, "_transaction", "isolation_level"
        )
    if dialect.driver == "psycopg":
        import psycopg
        from psycopg.pq import TransactionStatus
        from sqlalchemy.dialects.postgresql.psycopg import AsyncAdapt_psycopg_cursor

        return (
            all(hasattr(psycopg.Connection, name) for name in _PSYCOPG_HOOKS)
            and TransactionStatus.IDLE == 0  # libpq's PQTRANS_IDLE: any other status is truthy
            and _has_slots(
                AsyncAdapt_psycopg_cursor if dialect.is_async else psycopg.Cursor, _cursor_driver(dialect)
            )
        )
    return False


def _has_slots(cls: type, *names: str) -> bool:
    slots = {slot for klass in cls.__mro__ for slot in getattr(klass, "__slots__", ())}
    return all(name in slots for name in names)


def _cursor_driver(dialect: Dialect) -> str:
    """The attribute holding the driver connection on the DBAPI cursors of ``dialect`` (psycopg)."""
    return "_connection" if dialect.is_async else "_conn"  # SQLAlchemy's adapted cursor, or psycopg's own


def prepare_connect(dialect: Dialect, cargs: Any, connect_params: dict[str, Any]) -> Any:
    """``do_connect`` hook: make driver connections that can carry a pending suffix.

    Returns the connection when it has to make it itself (sync psycopg has no class parameter).
    """
    if dialect.driver == "asyncpg":
        import asyncpg

        base = connect_params.get("connection_class", asyncpg.Connection)
        connect_params["connection_class"] = _begin_aware(base)
    elif dialect.driver == "psycopg":
        import psycopg

        if dialect.is_async:
            if "async_creator_fn" not in connect_params:  # a creator of the user's own is left alone
                connect_params["async_creator_fn"] = _psycopg_begin_aware(psycopg.AsyncConnection).connect
        else:
            return _psycopg_begin_aware(psycopg.Connection).connect(*cargs, **connect_params)
    return None


class Access(NamedTuple):
    """How the per-statement check reaches a dialect's driver connection, in as few Python frames as it can.

    Each callable takes the DBAPI cursor SQLAlchemy executes on, and reads attributes in C.
    """

    driver_of: Callable[[Any], Any]
    in_transaction: Callable[[Any], object]  # truthy when the statement runs in an open transaction
    isolation: Callable[[Any], object]  # the adapter's isolation level; psycopg: its autocommit flag
    autocommit: object  # what ``isolation`` gives on an autocommit connection


def access(dialect: Dialect) -> Access:
    """The ``Access`` for ``dialect`` (asyncpg or psycopg), whose cursors hold their driver connection."""
    if dialect.driver == "asyncpg":
        # SQLAlchemy's adapted cursor keeps asyncpg's connection and the adapter, which sends BEGIN
        # (through asyncpg's Transaction) before a statement exactly when it holds no transaction
        return Access(
            driver_of=operator.attrgetter("_connection"),
            in_transaction=operator.attrgetter("_adapt_connection._transaction"),
            isolation=operator.attrgetter("_adapt_connection.isolation_level"),
            autocommit="autocommit",
        )
    driver = _cursor_driver(dialect)  # psycopg sends BEGIN when libpq's status is idle (0)
    return Access(
        driver_of=operator.attrgetter(driver),
        in_transaction=operator.attrgetter(driver + ".pgconn.transaction_status"),
        isolation=operator.attrgetter(driver + ".autocommit"),
        autocommit=True,
    )


def set_local_renderer(dialect: Dialect, setting: str) -> Callable[[str], str]:
    """A function rendering ``SET LOCAL setting = 'value'`` for validated values (alone or after BEGIN).

    ``SET LOCAL`` is transaction-local like ``set_config(..., true)`` and, as a utility statement, is
    not planned: measured on the raw driver, appending it to BEGIN costs ~5 us where a ``SELECT
    set_config`` costs ~40 us. The name is quoted by the dialect, the value rendered as a literal.
    """
    render = String().literal_processor(dialect)
    if render is None:
        raise ConfigurationError(f"dialect {dialect.name!r} cannot render string literals")
    prefix = "SET LOCAL " + ".".join(dialect.identifier_preparer.quote(p) for p in setting.split(".")) + " = "
    return lambda value: prefix + render(value)


class Queue:
    """Where one engine's instrumentation queues statements for BEGIN; closed by ``uninstrument()``.

    A queued statement that no BEGIN took (the driver did not begin a transaction) is never sent
    once its queue is closed, so it cannot reach a transaction pgtenancy no longer governs.
    """

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


NOT_TRACKED: Final = object()
"""What ``getattr(raw, APPLIED, NOT_TRACKED)`` gives for driver connections made before ``instrument()``."""


def _begin_aware(base: type) -> type:
    """A subclass of asyncpg's ``Connection`` class ``base`` that appends a pending suffix to BEGIN."""
    if hasattr(base, PENDING):
        return base
    subclass = _subclasses.get(base)
    if subclass is None:
        base_execute = base.execute

        class BeginAwareConnection(base):  # type: ignore[misc, valid-type]
            _pgtenancy_begin_suffix: tuple[Queue, str, object] | None = None
            _pgtenancy_applied: object = None
            _pgtenancy_ready = False

            def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
                # asyncpg's coroutine, called as a plain function: COMMIT and ROLLBACK pass here too
                if args or kwargs:
                    return base_execute(self, query, *args, **kwargs)
                if query.startswith("BEGIN"):
                    # marked before the round trip: a BEGIN that fails leaves no transaction to mark
                    pending, self._pgtenancy_begin_suffix = self._pgtenancy_begin_suffix, None
                    if pending is None or not pending[0].open:
                        self._pgtenancy_applied = None
                    else:
                        query = query + " " + pending[1]
                        self._pgtenancy_applied = pending[2]
                return base_execute(self, query)

        subclass = _subclasses[base] = BeginAwareConnection
    return subclass


def _psycopg_begin_aware(base: type) -> type:
    """A subclass of psycopg's (Async)Connection ``base`` sending a pending suffix with its BEGIN."""
    subclass = _subclasses.get(base)
    if subclass is not None:
        return subclass
    from psycopg import errors, generators, pq

    idle, fatal = pq.TransactionStatus.IDLE, pq.ExecStatus.FATAL_ERROR

    class BeginAwarePsycopg(base):  # type: ignore[misc, valid-type]
        _pgtenancy_begin_suffix: tuple[Queue, str, object] | None = None
        _pgtenancy_applied: object = None
        _pgtenancy_ready = False

        def _start_query(self) -> Any:
            if self.autocommit or self.pgconn.transaction_status != idle:
                return (yield from super()._start_query())  # no BEGIN will be sent
            pending, self._pgtenancy_begin_suffix = self._pgtenancy_begin_suffix, None
            if pending is None or not pending[0].open:
                yield from super()._start_query()
                self._pgtenancy_applied = None
                return None
            _, suffix, record = pending
            if getattr(self, "_pipeline", None):  # pipeline mode: BEGIN, then the suffix, queued together
                yield from super()._start_query()
                yield from self._exec_command(suffix.encode())
            else:
                self.pgconn.send_query(self._get_tx_start_command() + b"; " + suffix.encode())
                for result in (yield from generators.execute(self.pgconn)):
                    if result.status == fatal:
                        raise errors.error_from_result(result, encoding=self.info.encoding)
            self._pgtenancy_applied = record
            return None

    subclass = _subclasses[base] = BeginAwarePsycopg
    return subclass
