"""asyncpg: the tenant rides on the BEGIN that SQLAlchemy's adapter sends, checked under the adapter's lock.

Private names relied on (verified with SQLAlchemy 2.0.50, 2.0.58 and 2.1.9, asyncpg 0.32; ``VERIFIED`` below):

- SQLAlchemy's ``AsyncAdapt_asyncpg_connection``: ``_execute_mutex`` (the ``asyncio.Lock`` every statement
  of the adapter is sent under, replaced by a subclass that checks the tenant once it holds it),
  ``_connection`` (asyncpg's connection), ``isolation_level`` (``"autocommit"``: no BEGIN is sent) and
  ``_transaction`` (2.1) or ``_started`` (2.0): whether it will send BEGIN before the statement;
- SQLAlchemy's ``AsyncAdapt_asyncpg_cursor``: ``_connection`` and ``_adapt_connection``;
- asyncpg's ``Connection._protocol``, whose ``is_in_transaction()`` gives the server's status in C, and
  ``Connection._top_xact``, cleared after pgtenancy rolls back a transaction whose tenant it could not apply;
- the standard library's ``asyncio.Lock``: ``_locked`` and ``_waiters``, to take and give back a lock no
  other task waits for the way its ``acquire()`` and ``release()`` do, but without a coroutine per
  statement (Python 3.11 to 3.13).

Otherwise asyncpg is used through public names: ``connect(connection_class=...)`` and
``Connection.execute``, which asyncpg's ``Transaction`` sends ``BEGIN``, ``COMMIT`` and ``ROLLBACK`` through.
"""

from __future__ import annotations

import asyncio
import operator
import weakref
from collections.abc import Awaitable
from typing import Any, Final

from sqlalchemy import Dialect

from pgtenancy.awaitables import DONE
from pgtenancy.drivers.state import ConnectionState, autocommit_refused
from pgtenancy.errors import ConfigurationError, TenancyError

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

NAME: Final = "asyncpg"
PRIVATE_NAMES: Final = (
    "asyncio.Lock._locked, asyncio.Lock._waiters (acquire's and release's fast paths)",
    "asyncpg Connection._top_xact (cleared after rolling back a transaction whose tenant failed)",
    "asyncpg Connection._protocol (its is_in_transaction(): the server's transaction status, in C)",
    "sqlalchemy AsyncAdapt_asyncpg_connection._transaction (2.1) / _started (2.0)",
    "sqlalchemy AsyncAdapt_asyncpg_connection._execute_mutex",
    "sqlalchemy AsyncAdapt_asyncpg_connection._connection",
    "sqlalchemy AsyncAdapt_asyncpg_connection.isolation_level",
    "sqlalchemy AsyncAdapt_asyncpg_cursor._connection",
    "sqlalchemy AsyncAdapt_asyncpg_cursor._adapt_connection",
)
VERIFIED: Final = {"sqlalchemy": ("2.0.50", "2.1.9"), "asyncpg": ("0.32.0", "0.32.0")}
"""The oldest and newest releases the names above were verified in, per distribution."""


def _adapter_open_getter() -> Any:
    """Reads whether SQLAlchemy's adapter holds a transaction: ``_started`` (2.0), ``_transaction`` (2.1)."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    return operator.attrgetter(
        "_started" if "_started" in _slots(AsyncAdapt_asyncpg_connection) else "_transaction"
    )


_ENDS: Final = frozenset({"COMMIT;", "ROLLBACK;", "COMMIT", "ROLLBACK"})  # what asyncpg's Transaction sends
_subclasses: dict[tuple[type, bool], type] = {}
_states: weakref.WeakKeyDictionary[Any, ConnectionState] = weakref.WeakKeyDictionary()


def available(dialect: Dialect) -> str | None:
    """``None`` when the names above exist in the installed SQLAlchemy, else what is missing."""
    from sqlalchemy.dialects.postgresql.asyncpg import (
        AsyncAdapt_asyncpg_connection,
        AsyncAdapt_asyncpg_cursor,
    )

    missing = [
        name
        for cls, names in (
            (AsyncAdapt_asyncpg_connection, ("_execute_mutex", "_connection", "isolation_level")),
            (AsyncAdapt_asyncpg_cursor, ("_connection", "_adapt_connection")),
        )
        for name in names
        if name not in _slots(cls)
    ]
    return ", ".join(missing) or None


def _slots(cls: type) -> set[str]:
    return {slot for klass in cls.__mro__ for slot in getattr(klass, "__slots__", ())}


_ADAPTER_OPEN: Final = _adapter_open_getter()


def state_getter(dialect: Dialect) -> Any:
    """Reads the ``ConnectionState`` of asyncpg's connection behind SQLAlchemy's adapted cursor, in C."""
    return operator.attrgetter("_connection._pgtenancy")


def autocommit_getter(dialect: Dialect) -> tuple[Any, object]:
    """Reads the adapter's isolation level from the cursor, and the value it has in autocommit mode."""
    return operator.attrgetter("_adapt_connection.isolation_level"), "autocommit"


def connect(dialect: Dialect, make: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
    """SQLAlchemy's own connect, with a connection class that carries the tenant with BEGIN."""
    import asyncpg

    cparams["connection_class"] = _tenant_aware(cparams.get("connection_class", asyncpg.Connection), True)
    return make(*cargs, **cparams)


def in_transaction(dbapi_connection: Any) -> bool:
    """Whether the server holds a transaction open on this adapted connection."""
    return bool(dbapi_connection._connection.is_in_transaction())


def backend_pid(dbapi_connection: Any) -> int:
    """The backend pid asyncpg was told when it connected (``Connection.get_server_pid()``)."""
    return int(dbapi_connection._connection.get_server_pid())


def arm(dbapi_connection: Any, state: ConnectionState) -> None:
    """Govern SQLAlchemy's adapted connection by ``state``: BEGIN carries the tenant, statements are checked.

    A connection made outside SQLAlchemy's connect (``async_creator``, or before ``instrument()``) gets
    the same behaviour through a subclass without instance storage, its state kept aside.
    """
    driver = dbapi_connection._connection
    cls = type(driver)
    if not issubclass(cls, _Hooks):
        try:
            driver.__class__ = _tenant_aware(cls, False)
        except TypeError as error:
            raise ConfigurationError(
                f"cannot instrument connections of class {cls.__qualname__}: {error}; "
                "let SQLAlchemy make the connections (no async_creator returning this class)"
            ) from error
    driver._pgtenancy = state
    mutex = dbapi_connection._execute_mutex
    if isinstance(mutex, _CheckedMutex):
        mutex.state = state
    else:
        dbapi_connection._execute_mutex = _CheckedMutex(state, dbapi_connection)


class _CheckedMutex(asyncio.Lock):
    """The adapter's statement lock; once held, the statement is checked against its transaction's tenant.

    Whether a transaction is open is the server's word (asyncpg's protocol status as of the last message),
    not what pgtenancy or SQLAlchemy last saw: a BEGIN or COMMIT cut short by a cancellation or a dead
    backend can leave either out of date.
    """

    def __init__(self, state: ConnectionState, adapter: Any) -> None:
        super().__init__()
        self.state = state
        self._adapter = adapter  # a cycle with the adapter, collected with it
        self._in_transaction = adapter._connection._protocol.is_in_transaction
        self._open = _ADAPTER_OPEN  # truthy while the adapter holds a transaction (it sends no BEGIN)

    def __aenter__(self) -> Awaitable[None]:  # type: ignore[override]
        # asyncio.Lock's own fast path for a free lock, without a coroutine per statement
        waiters = self._waiters
        if self._locked or (waiters and not all(waiter.cancelled() for waiter in waiters)):  # type: ignore[has-type]
            return self._acquire_and_check()
        self._locked = True
        self._check_held()
        return DONE

    def __aexit__(self, *exc_info: object) -> Awaitable[None]:  # type: ignore[override]
        if self._waiters or not self._locked:
            self.release()  # a task waits (release wakes it), or the lock is not held (release raises)
        else:
            self._locked = False
        return DONE

    async def _acquire_and_check(self) -> None:
        await self.acquire()
        self._check_held()

    def _check_held(self) -> None:
        """The lock is held and the statement is about to be sent: refuse it unless its transaction (open,
        or begun by the BEGIN the adapter sends now) carries the bound tenant; releases the lock if so."""
        state = self.state
        try:
            if not (state.ready and state.tenancy.active):
                return
            if self._in_transaction():
                state.check_opened()
                return
            state.applied = None  # no transaction is open: the BEGIN the adapter sends now records one
            adapter = self._adapter
            if adapter.isolation_level == "autocommit":
                raise autocommit_refused()
            if self._open(adapter):
                raise TenancyError(
                    "SQLAlchemy's adapter holds a transaction the server has ended (a COMMIT or ROLLBACK was "
                    "cut short): the statement would run without one; roll back and retry"
                )
        except BaseException:
            self.release()
            raise


class _Hooks:
    """``execute`` of asyncpg's connection: BEGIN carries the tenant, COMMIT and ROLLBACK end it."""

    __slots__ = ()
    _pgtenancy: ConnectionState | None
    _base_execute: Any

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        # asyncpg's coroutine function, called as a plain function: no extra frame on COMMIT and ROLLBACK
        state = self._pgtenancy
        if state is None or args or kwargs:
            return self._base_execute(query, *args, **kwargs)
        if query in _ENDS:
            state.applied = None
            return self._base_execute(query)
        if query[:5] == "BEGIN":  # not str.startswith: it parses a tuple of arguments per call
            reset, apply, seal = state.begin()
            if reset is not None or (apply is not None and state.tenancy.separate):
                return self._in_steps(state, reset, query, apply if seal is None else f"{apply}; {seal}")
            if apply is None:
                return self._base_execute(query)
            if seal is None:  # one string built per BEGIN, not one per concatenation
                return self._base_execute(f"{query} {apply}")
            return self._base_execute(f"{query} {apply}; {seal}")
        return self._base_execute(query)

    async def _in_steps(
        self, state: ConnectionState, reset: str | None, begin: str, apply: str | None
    ) -> Any:
        """A reset before BEGIN (its own message: committed even if the transaction is rolled back), or
        ``mode="set_config"``/``"set_local"``: the tenant applied by a statement of its own after BEGIN."""
        if reset is not None:
            await self._base_execute(reset)
        if apply is None or not state.tenancy.separate:
            return await self._base_execute(begin if apply is None else begin + " " + apply)
        try:
            result = await self._base_execute(begin)
            await self._base_execute(apply)
        except BaseException as error:
            state.failed()  # the open transaction carries no tenant: its statements are refused
            connection: Any = self  # an asyncpg Connection: _Hooks is mixed into its subclass
            if isinstance(error, Exception) and connection.is_in_transaction():
                await self._abandon()
            raise
        return result

    async def _abandon(self) -> None:
        """Roll back a transaction whose tenant could not be applied, so the connection can begin anew.

        asyncpg keeps the ``Transaction`` whose start failed as the connection's top transaction and would
        treat every later BEGIN as a savepoint inside it: that record is cleared too.
        """
        try:
            await self._base_execute("ROLLBACK")
        except Exception:
            return
        connection: Any = self
        connection._top_xact = None
        state = self._pgtenancy
        if state is not None:
            state.applied = None


def _tenant_aware(base: type[Any], storage: bool) -> type:
    """A subclass of asyncpg's ``Connection`` class ``base`` with pgtenancy's hooks.

    ``storage``: instances keep their state in an attribute of their own (connections pgtenancy makes);
    without it the subclass adds nothing to the layout, so an existing connection can be given it.
    """
    if issubclass(base, _Hooks):
        return base
    subclass = _subclasses.get((base, storage))
    if subclass is not None:
        return subclass
    namespace: dict[str, Any] = {"_base_execute": base.execute}
    if storage:
        namespace["_pgtenancy"] = None
    else:
        namespace["__slots__"] = ()
        namespace["_pgtenancy"] = property(_states.get, _states.__setitem__)
    subclass = _subclasses[base, storage] = type("TenantAwareConnection", (_Hooks, base), namespace)
    return subclass
