"""``instrument()``: apply the bound tenant transaction-locally at the start of every transaction."""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from sqlalchemy import Connection, Dialect, Engine, bindparam, event, func, select, true
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pgtenancy.config import DEFAULT_SETTING, validate_key_type, validate_setting_name, validate_tenant_id
from pgtenancy.context import NO_TENANT, current_binding
from pgtenancy.drivers import (
    APPLIED,
    NOT_TRACKED,
    PENDING,
    READY,
    Queue,
    access,
    prepare_connect,
    set_local_renderer,
    supports_begin,
)
from pgtenancy.errors import (
    AutocommitError,
    ConfigurationError,
    NoTenantError,
    TenantSwitchError,
    UnsafeRoleError,
)
from pgtenancy.roles import verify_dbapi_role
from pgtenancy.roles import verify_role as _verify_role

__all__ = ["Mode", "OnMissing", "TenancyConfig", "instrument", "is_instrumented", "uninstrument"]

Mode = Literal["begin", "set_config", "set_local"]
OnMissing = Literal["raise", "empty"]
Target = TypeVar("Target", Engine, AsyncEngine, sessionmaker[Any], async_sessionmaker[Any])

_APPLIED: Final = (
    "pgtenancy.applied"  # connection-record key: (raw binding, canonical value) of the open transaction
)
_VERIFIED: Final = (
    "pgtenancy.role_verified"  # connection-record key: the role check passed on this DBAPI connection
)
_SET_CONFIG = select(func.set_config(bindparam("setting"), bindparam("value"), true()))
_instrumented: weakref.WeakKeyDictionary[Engine, _Listeners] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class TenancyConfig:
    """How an engine applies the bound tenant; validated once by ``instrument()``."""

    setting: str = DEFAULT_SETTING
    key_type: str = "uuid"
    on_missing: OnMissing = "raise"
    verify_role: bool = True
    mode: Mode = "begin"

    def __post_init__(self) -> None:
        validate_setting_name(self.setting)
        validate_key_type(self.key_type)
        if self.on_missing not in ("raise", "empty"):
            raise ConfigurationError(f"on_missing must be 'raise' or 'empty', not {self.on_missing!r}")
        if self.mode not in ("begin", "set_config", "set_local"):
            raise ConfigurationError(f"mode must be 'begin', 'set_config' or 'set_local', not {self.mode!r}")


def instrument(
    target: Target,
    *,
    setting: str = DEFAULT_SETTING,
    key_type: str = "uuid",
    on_missing: OnMissing = "raise",
    verify_role: bool = True,
    mode: Mode = "begin",
) -> Target:
    """Make every transaction on ``target`` carry the bound tenant, transaction-locally.

    Each transaction applies the tenant transaction-locally: with ``mode="begin"`` (default) as
    ``SET LOCAL setting = 'tenant'`` in the same message as the driver's own ``BEGIN`` where the
    driver allows it (asyncpg and psycopg 3: checked per statement in front of the engine's own
    dialect methods, no SQLAlchemy events on the statement path), else
    as ``SELECT set_config(setting, tenant, true)``; ``mode="set_config"`` always that separate
    statement; ``mode="set_local"`` a separate ``SET LOCAL`` (for Citus). Idempotent; returns
    ``target``.

    :param target: an ``Engine``, ``AsyncEngine``, ``sessionmaker`` or ``async_sessionmaker`` (its binds).
    :param setting: the custom setting the RLS policies read.
    :param key_type: ``"uuid"``, ``"int"`` or ``"str"``; ids that do not match raise ``InvalidTenantError``.
    :param on_missing: ``"raise"`` a ``NoTenantError`` when no tenant is bound, or run it as
        ``"empty"`` (no tenant: RLS shows no rows and rejects writes).
    :param verify_role: refuse (``UnsafeRoleError``) a role that bypasses RLS, once per new connection.
    """
    config = TenancyConfig(setting, key_type, on_missing, verify_role, mode)
    for engine in _engines_of(target):
        existing = _instrumented.get(engine)
        if existing is not None:
            if existing.config != config:
                raise ConfigurationError(
                    "engine is already instrumented with other options; call uninstrument() first"
                )
            continue
        kind = _DriverLevel if config.mode == "begin" and supports_begin(engine.dialect) else _EventLevel
        _instrumented[engine] = kind(config, engine.dialect).install(engine)
    return target


def uninstrument(target: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any]) -> None:
    """Remove pgtenancy's listeners from ``target``'s engines (a no-op where there are none)."""
    for engine in _engines_of(target):
        instrumentation = _instrumented.pop(engine, None)
        if instrumentation is not None:
            instrumentation.remove(engine)


def is_instrumented(target: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any]) -> bool:
    """Whether every engine behind ``target`` is instrumented."""
    return all(engine in _instrumented for engine in _engines_of(target))


def _engines_of(target: object) -> list[Engine]:
    """The sync engines behind an engine or session factory."""
    if isinstance(target, AsyncEngine):
        return _engines_of(target.sync_engine)
    if isinstance(target, OptionEngine):  # execution_options() copies share their origin's pool and dialect
        return _engines_of(target._proxied)
    if isinstance(target, Engine):
        return [target]
    if isinstance(target, (sessionmaker, async_sessionmaker)):
        binds = [target.kw.get("bind"), *(target.kw.get("binds") or {}).values()]
        engines = [engine for bind in binds if bind is not None for engine in _engines_of(bind)]
        if engines:
            return engines
        raise ConfigurationError("the session factory has no bind: create it with bind=engine")
    raise ConfigurationError(
        f"cannot instrument {type(target).__name__}: pass an Engine, AsyncEngine, sessionmaker "
        "or async_sessionmaker"
    )


class _Listeners:
    """Event listeners enforcing one ``TenancyConfig`` on one engine, and the checks they share."""

    def __init__(self, config: TenancyConfig, dialect: Dialect) -> None:
        self.config = config
        self._set_local = set_local_renderer(dialect, config.setting)
        self._listeners: tuple[tuple[str, Any], ...] = ()
        # validated value and SET LOCAL text per bound id; typed, so True never passes for 1
        self._resolve = functools.lru_cache(maxsize=4096, typed=True)(self._value_and_sql)

    def install(self, engine: Engine) -> _Listeners:
        for name, listener in self._listeners:
            event.listen(engine, name, listener)
        return self

    def remove(self, engine: Engine) -> None:
        for name, listener in self._listeners:
            if event.contains(engine, name, listener):
                event.remove(engine, name, listener)

    def _value_and_sql(self, binding: object) -> tuple[str, str]:
        """The value for ``binding`` (``''`` for no tenant, else the validated id) and its SET LOCAL.

        Called through ``_resolve``, its cache; errors are raised, never cached.
        """
        if binding is None and self.config.on_missing == "raise":
            raise NoTenantError(
                "no tenant is bound: wrap the work in tenant_context(tenant_id), "
                "or in without_tenant() for work on behalf of no tenant"
            )
        value = (
            ""
            if binding is None or binding is NO_TENANT
            else validate_tenant_id(binding, self.config.key_type)
        )
        return value, self._set_local(value)

    def _check_switch(self, applied: tuple[object, str], binding: object) -> None:
        """Refuse a statement whose context binds another tenant than its transaction carries."""
        if binding is applied[0]:
            return
        value = None if binding is None else self._resolve(binding)[0]
        if value != applied[1]:
            raise TenantSwitchError(
                "this transaction was begun for another tenant than the one bound now; "
                "use one Session/Connection per tenant context and do not share it across tasks"
            )


def _autocommit_error() -> AutocommitError:
    return AutocommitError(
        "an AUTOCOMMIT connection cannot carry a transaction-local tenant; "
        "use the default isolation level on tenant engines"
    )


class _EventLevel(_Listeners):
    """Engine events: check and apply the tenant at ``begin``, check each statement, forget at the end."""

    def __init__(self, config: TenancyConfig, dialect: Dialect) -> None:
        super().__init__(config, dialect)
        self._listeners = (
            ("begin", self._on_begin),
            ("before_cursor_execute", self._on_statement),
            ("commit", self._on_end),
            ("rollback", self._on_end),
            ("connect", self._on_connect),
        )

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        """A new DBAPI connection has not been role-checked yet."""
        record.info.pop(_VERIFIED, None)

    def _on_begin(self, conn: Connection) -> None:
        """Check, then apply the bound tenant before the transaction's first statement."""
        info = conn.info
        info.pop(_APPLIED, None)
        binding = current_binding()
        value, set_local = self._resolve(binding)
        if getattr(conn.connection.dbapi_connection, "autocommit", False):
            raise _autocommit_error()
        if self.config.verify_role and not info.get(_VERIFIED):
            _verify_role(conn)
            info[_VERIFIED] = True
        if self.config.mode == "set_local":
            conn.exec_driver_sql(set_local)
        else:
            conn.execute(_SET_CONFIG, {"setting": self.config.setting, "value": value})
        info[_APPLIED] = (binding, value)

    def _on_statement(self, conn: Connection, *args: Any) -> None:
        applied = conn.info.get(_APPLIED)
        if applied is not None:
            self._check_switch(applied, current_binding())

    def _on_end(self, conn: Connection) -> None:
        """The transaction is over: forget its tenant (an invalidated connection has nothing to forget)."""
        if not conn.invalidated:
            conn.info.pop(_APPLIED, None)


class _DriverLevel(_Listeners):
    """asyncpg and psycopg, ``mode="begin"``: the engine's dialect checks every statement itself.

    Before each statement, what decides whether the driver sends ``BEGIN`` first (asyncpg: the
    SQLAlchemy adapter's transaction; psycopg: libpq's status) tells whether the statement begins a
    transaction: then the tenant is checked and queued as ``SET LOCAL`` to ride on that ``BEGIN``;
    otherwise the statement is checked against the tenant applied.

    The check is installed on the engine's own dialect instance, in front of its ``connect`` and
    ``do_execute*`` methods, not as dialect events: any dialect event makes SQLAlchemy take its
    slower event-dispatching path for every statement, measured at ~1 % of a point select.
    """

    _CHECKED: Final = ("do_execute", "do_execute_no_params", "do_executemany")
    _OVERRIDDEN: Final = ("connect", *_CHECKED)

    def __init__(self, config: TenancyConfig, dialect: Dialect) -> None:
        super().__init__(config, dialect)
        self._queue = Queue()
        self._driver_of, self._in_transaction, self._isolation, self._autocommit = access(dialect)
        self._listeners = (("connect", self._on_connect),)

    def install(self, engine: Engine) -> _Listeners:
        dialect = engine.dialect
        if any(name in vars(dialect) for name in self._OVERRIDDEN):
            raise ConfigurationError("the engine's dialect has methods replaced on it; cannot instrument it")
        connect = dialect.connect

        def make_connection(*cargs: Any, **cparams: Any) -> Any:
            """New driver connections are made able to carry the tenant with their BEGIN."""
            made = prepare_connect(dialect, cargs, cparams)
            return connect(*cargs, **cparams) if made is None else made

        vars(dialect)["connect"] = make_connection
        for name in self._CHECKED:
            vars(dialect)[name] = functools.partial(self._checked, getattr(dialect, name))
        return super().install(engine)

    def remove(self, engine: Engine) -> None:
        self._queue.open = False
        for name in self._OVERRIDDEN:
            vars(engine.dialect).pop(name, None)
        super().remove(engine)

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        """Check the role once per new connection (refuse and close one that bypasses RLS); mark it ready.

        The pool runs this after SQLAlchemy's own set-up statements, which must not carry a tenant.
        """
        if self.config.verify_role:
            try:
                verify_dbapi_role(dbapi_connection)
            except UnsafeRoleError:
                dbapi_connection.close()
                raise
        raw = getattr(dbapi_connection, "driver_connection", dbapi_connection)  # async: the adapted driver's
        if getattr(raw, READY, None) is False:
            setattr(raw, READY, True)

    def _checked(self, run: Any, cursor: Any, statement: str, *args: Any) -> None:
        """Check the statement against its transaction's tenant, or queue the tenant; then ``run`` it."""
        raw = self._driver_of(cursor)
        binding = current_binding()
        applied = getattr(raw, APPLIED, NOT_TRACKED)  # set by the BEGIN that opened the transaction
        in_transaction = self._in_transaction(cursor)
        if in_transaction and applied is not None and applied is not NOT_TRACKED:
            if binding is not applied[0]:
                self._check_switch(applied, binding)
        elif applied is NOT_TRACKED:  # args end with the execution context
            self._untracked(cursor, binding, in_transaction, args[-1].root_connection)
        elif getattr(raw, READY):  # else SQLAlchemy's set-up: its BEGIN carries nothing
            value, sql = self._resolve(binding)
            if self._isolation(cursor) == self._autocommit:
                raise _autocommit_error()
            record = (binding, value)
            if in_transaction:  # a transaction whose BEGIN carried no tenant: apply it now
                cursor.execute(sql)
                setattr(raw, APPLIED, record)
            else:
                setattr(raw, PENDING, (self._queue, sql, record))
        run(cursor, statement, *args)

    def _untracked(self, cursor: Any, binding: object, in_transaction: object, conn: Connection) -> None:
        """The check for a driver connection made before ``instrument()``: its pool record tracks."""
        fairy = conn.connection
        if not conn.in_transaction():  # set-up SQL: whatever it opens, the next statement applies anew
            with contextlib.suppress(NotImplementedError):  # the set-up's ad hoc proxy has no info
                fairy.info.pop(_APPLIED, None)
            return
        applied = fairy.info.get(_APPLIED)
        if in_transaction and applied is not None:
            self._check_switch(applied, binding)
            return
        value, sql = self._resolve(binding)
        if self._isolation(cursor) == self._autocommit:
            raise _autocommit_error()
        cursor.execute(sql)
        fairy.info[_APPLIED] = (binding, value)
