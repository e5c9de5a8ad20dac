"""``instrument()``: apply the bound tenant transaction-locally at the start of every transaction."""

from __future__ import annotations

import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from sqlalchemy import Connection, Dialect, Engine, event
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pgtenancy.config import DEFAULT_SETTING, validate_key_type, validate_setting_name, validate_tenant_id
from pgtenancy.context import NO_TENANT, current_binding
from pgtenancy.drivers import (
    Adapter,
    ConnectionState,
    Resolution,
    adapter_for,
    autocommit_refused,
    set_config_renderer,
    set_local_renderer,
    unverified,
)
from pgtenancy.errors import (
    ConfigurationError,
    NoTenantError,
    TenancyError,
    TenantSwitchError,
    UnsafeStatementError,
)
from pgtenancy.roles import verify_dbapi_role
from pgtenancy.roles import verify_role as _verify_role
from pgtenancy.seal import Seal, Sealed, Signer, signer
from pgtenancy.sessions import forget_engine, guard_sessions
from pgtenancy.statements import CLEAN, Verdict, names_setting, refuse, vet

__all__ = [
    "FallbackWarning",
    "Mode",
    "OnMissing",
    "TenancyConfig",
    "UnverifiedVersionWarning",
    "instrument",
    "instrumentation_path",
    "is_instrumented",
    "uninstrument",
]

Mode = Literal["begin", "set_config", "set_local"]
OnMissing = Literal["raise", "empty"]
Target = TypeVar("Target", Engine, AsyncEngine, sessionmaker[Any], async_sessionmaker[Any])

_APPLIED: Final = (
    "pgtenancy.applied"  # connection-record key: (raw binding, canonical value) of the open transaction
)
_VERIFIED: Final = (
    "pgtenancy.role_verified"  # connection-record key: the role check passed on this DBAPI connection
)
_APPLYING: Final = "pgtenancy.applying"  # connection-info key: the tenant's own statement is being sent
_VETTED_MAX: Final = 4096  # statement texts whose verdict an engine remembers
_RESOLVED_MAX: Final = 4096  # bindings whose value and SQL an engine remembers
_BACKEND_SQL: Final = "SELECT pg_catalog.pg_backend_pid(), extract(epoch FROM pg_catalog.clock_timestamp())"
_instrumented: weakref.WeakKeyDictionary[Engine, _Listeners] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class TenancyConfig:
    """How an engine applies the bound tenant; validated once by ``instrument()``."""

    setting: str = DEFAULT_SETTING
    key_type: str = "uuid"
    on_missing: OnMissing = "raise"
    verify_role: bool = True
    mode: Mode = "begin"
    seal: Seal | None = None

    def __post_init__(self) -> None:
        validate_setting_name(self.setting)
        validate_key_type(self.key_type)
        if self.on_missing not in ("raise", "empty"):
            raise ConfigurationError(f"on_missing must be 'raise' or 'empty', not {self.on_missing!r}")
        if self.mode not in ("begin", "set_config", "set_local"):
            raise ConfigurationError(f"mode must be 'begin', 'set_config' or 'set_local', not {self.mode!r}")
        if self.seal is not None:
            if not isinstance(self.seal, Seal):
                raise ConfigurationError("seal must be a pgtenancy.seal.Seal")
            if self.mode == "set_local":
                raise ConfigurationError(
                    "seal cannot be used with mode='set_local' (Citus): the workers run other backends than "
                    "the one a signature is bound to, and refuse the verifier's subquery in a policy"
                )
            if self.seal.setting == self.setting:
                raise ConfigurationError("the seal needs a setting of its own, not the tenant setting")


def instrument(
    target: Target,
    *,
    setting: str = DEFAULT_SETTING,
    key_type: str = "uuid",
    on_missing: OnMissing = "raise",
    verify_role: bool = True,
    mode: Mode = "begin",
    seal: Seal | None = None,
) -> Target:
    """Make every transaction on ``target`` carry the bound tenant, transaction-locally.

    With asyncpg and psycopg 3 the driver adapter applies the tenant as the driver sends ``BEGIN``
    and checks every statement under the driver's own lock, so the check is atomic with sending:
    ``mode="begin"`` (default) sends ``SET LOCAL setting = 'tenant'`` in ``BEGIN``'s own message,
    ``mode="set_config"`` a ``SELECT set_config(setting, tenant, true)`` after it, ``mode="set_local"``
    a separate ``SET LOCAL`` (Citus). Other drivers fall back to SQLAlchemy events, with a
    ``FallbackWarning``. Statements naming the setting are refused. Idempotent; returns ``target``.

    :param target: an ``Engine``, ``AsyncEngine``, ``sessionmaker`` or ``async_sessionmaker`` (its binds).
    :param setting: the custom setting the RLS policies read.
    :param key_type: ``"uuid"``, ``"int"`` or ``"str"``; ids that do not match raise ``InvalidTenantError``.
    :param on_missing: ``"raise"`` a ``NoTenantError`` when no tenant is bound, or run it as
        ``"empty"`` (no tenant: RLS shows no rows and rejects writes).
    :param verify_role: refuse (``UnsafeRoleError``) a role that bypasses RLS, once per new connection.
    :param seal: sign the tenant for policies sealed by ``op.seal_tenant_isolation`` (see ``Seal``);
        needs the asyncpg or psycopg adapter and direct connections to PostgreSQL (no PgBouncer).
    """
    config = TenancyConfig(setting, key_type, on_missing, verify_role, mode, seal)
    for engine in _engines_of(target):
        existing = _instrumented.get(engine)
        if existing is not None:
            if existing.config != config:
                raise ConfigurationError(
                    "engine is already instrumented with other options; call uninstrument() first"
                )
            continue
        adapter, reason = adapter_for(engine.dialect)
        if adapter is None and seal is not None:
            raise ConfigurationError(f"{reason}: sealing needs a driver adapter")
        if adapter is None:
            warnings.warn(
                f"{reason}: pgtenancy falls back to SQLAlchemy events, whose check is not atomic with "
                "sending the statement (a connection shared by concurrent tasks is not guarded)",
                FallbackWarning,
                stacklevel=2,
            )
            instrumentation: _Listeners = _EventLevel(config, engine.dialect)
        else:
            newer = unverified(adapter)
            if newer:
                warnings.warn(
                    f"pgtenancy's {adapter.NAME} adapter was not verified with {', '.join(newer)}: it found "
                    "the private names it relies on, but upgrade pgtenancy or pin the older release",
                    UnverifiedVersionWarning,
                    stacklevel=2,
                )
            instrumentation = _DriverLevel(config, engine.dialect, adapter)
        _instrumented[engine] = instrumentation.install(engine)
    return target


class FallbackWarning(UserWarning):
    """pgtenancy cannot use its driver adapter for an engine and guards it with SQLAlchemy events instead."""


class UnverifiedVersionWarning(UserWarning):
    """A driver or SQLAlchemy release newer than the newest one pgtenancy's adapter was verified with."""


def instrumentation_path(target: Engine | AsyncEngine | sessionmaker[Any] | async_sessionmaker[Any]) -> str:
    """``"driver"`` when every engine behind ``target`` is guarded by its driver adapter, ``"events"`` when
    one falls back to SQLAlchemy events; raises ``ConfigurationError`` when one is not instrumented."""
    paths = set()
    for engine in _engines_of(target):
        instrumentation = _instrumented.get(engine)
        if instrumentation is None:
            raise ConfigurationError("the engine is not instrumented: call instrument() first")
        paths.add("driver" if isinstance(instrumentation, _DriverLevel) else "events")
    return "events" if "events" in paths else "driver"


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
    """The tenancy one ``TenancyConfig`` enforces on one engine: resolving bindings and reading statements."""

    def __init__(self, config: TenancyConfig, dialect: Dialect) -> None:
        self.config = config
        self.active = True  # read by the connections this instrumentation armed; False after uninstrument()
        self.separate = config.mode != "begin"  # the tenant is applied by a statement of its own
        self._apply_sql = self._renderer(config.mode)(dialect, config.setting)
        self._seal_sql = None if config.seal is None else set_local_renderer(dialect, config.seal.setting)
        self._listeners: tuple[tuple[str, Any, bool], ...] = ()
        self._vetted: dict[str, Verdict] = {}
        self._resolved: dict[object, Resolution] = {}
        # hot paths read the cache in C, then check the binding's type
        self.resolved: Callable[[object], Resolution | None] = self._resolved.get

    @staticmethod
    def _renderer(mode: Mode) -> Any:
        """How the tenant's SQL is rendered: ``SET LOCAL``, or ``set_config`` for ``mode="set_config"``."""
        return set_config_renderer if mode == "set_config" else set_local_renderer

    def install(self, engine: Engine) -> _Listeners:
        for name, listener, insert in self._listeners:
            event.listen(engine, name, listener, insert=insert)
        guard_sessions(engine, self.resolve)
        return self

    def remove(self, engine: Engine) -> None:
        self.active = False
        forget_engine(engine)
        for name, listener, _ in self._listeners:
            if event.contains(engine, name, listener):
                event.remove(engine, name, listener)

    def resolve(self, binding: object) -> Resolution:
        """The value for ``binding`` (``''`` for no tenant, else the validated id), the SQL applying it and
        the binding's type: cached per binding and type (so ``True`` never passes for ``1``); errors are
        raised, never cached."""
        resolution = self._resolved.get(binding)
        if resolution is not None and resolution[2] is type(binding):
            return resolution
        if binding is None and self.config.on_missing == "raise":
            raise NoTenantError(_no_tenant_advice())
        value = (
            ""
            if binding is None or binding is NO_TENANT
            else validate_tenant_id(binding, self.config.key_type)
        )
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()
        resolution = self._resolved[binding] = (value, self._apply_sql(value), type(binding))
        return resolution

    def _verdict(self, statement: str, parameters: object) -> Verdict:
        """Refuse a statement that re-points the setting or ends the transaction; else its verdict."""
        verdict = self._vetted.get(statement)
        if verdict is None:
            verdict = vet(statement, self.config.setting)
            if len(self._vetted) >= _VETTED_MAX:
                self._vetted.clear()
            self._vetted[statement] = verdict
        if verdict.refusal is not None:
            raise refuse(verdict)
        if verdict.set_config and names_setting(parameters, self.config.setting):
            raise UnsafeStatementError(
                f"refused before it was sent: set_config is given the tenant setting {self.config.setting!r} "
                "as a parameter; pgtenancy alone sets it, at BEGIN"
            )
        return verdict


def _no_tenant_advice() -> str:
    """What to do about a transaction begun with no tenant bound, for where it began; built only to raise."""
    advice = (
        "no tenant is bound: wrap the work in tenant_context(tenant_id), "
        "or in without_tenant() for work on behalf of no tenant"
    )
    if threading.current_thread() is not threading.main_thread():
        advice += (
            ". This is not the main thread: a thread started by loop.run_in_executor, a thread pool or "
            "threading.Thread inherits no tenant; from a request or job, start it with "
            "pgtenancy.jobs.run_in_executor(executor, function, *args), "
            "or run it in contextvars.copy_context()"
        )
    if "fastapi" in sys.modules:
        advice += (
            ". In FastAPI, a tenant_context entered in a sync (def) dependency does not reach the endpoint: "
            "make that dependency async def"
        )
    return advice


class _DriverLevel(_Listeners):
    """asyncpg and psycopg: the driver adapter applies and checks the tenant under the driver's lock.

    Each connection gets a ``ConnectionState``: its driver's BEGIN carries the tenant bound when it is
    sent, and every statement sent inside the transaction is checked against that tenant while the
    driver's lock is held. In front of that, the engine's own dialect methods read each statement
    (refusing what re-points the setting, noting session state) and refuse, before anything is sent,
    a binding that cannot be applied and an AUTOCOMMIT connection. They are replaced on the dialect
    instance, not hooked as dialect events: any dialect event makes SQLAlchemy take its slower
    event-dispatching path for every statement, measured at ~1 % of a point select.
    """

    _OVERRIDDEN: Final = ("connect", "do_execute", "do_execute_no_params", "do_executemany")

    def __init__(self, config: TenancyConfig, dialect: Dialect, adapter: Adapter) -> None:
        super().__init__(config, dialect)
        self.adapter = adapter
        self._state_of = adapter.state_getter(dialect)
        self._isolation, self._autocommit = adapter.autocommit_getter(dialect)
        self._listeners = (("connect", self._on_new_connection, True), ("connect", self._on_connect, False))

    def install(self, engine: Engine) -> _Listeners:
        dialect = engine.dialect
        if any(name in vars(dialect) for name in self._OVERRIDDEN):
            raise ConfigurationError("the engine's dialect has methods replaced on it; cannot instrument it")
        connect, adapter = dialect.connect, self.adapter

        def make_connection(*cargs: Any, **cparams: Any) -> Any:
            """New driver connections are made able to carry the tenant with their BEGIN."""
            return adapter.connect(dialect, connect, cargs, cparams)

        vars(dialect)["connect"] = make_connection
        vars(dialect)["do_execute"] = self._checked(dialect.do_execute)
        vars(dialect)["do_executemany"] = self._checked(dialect.do_executemany)
        vars(dialect)["do_execute_no_params"] = self._checked_no_params(dialect.do_execute_no_params)
        return super().install(engine)

    def remove(self, engine: Engine) -> None:
        for name in self._OVERRIDDEN:
            vars(engine.dialect).pop(name, None)
        super().remove(engine)

    def _on_new_connection(self, dbapi_connection: Any, record: Any) -> None:
        """Before SQLAlchemy's own set-up statements run on a new connection: govern it, not yet checking."""
        self.adapter.arm(dbapi_connection, ConnectionState(self, ready=False))

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        """After SQLAlchemy's set-up: check the role (refuse and close one that bypasses RLS), then check."""
        state = ConnectionState(self, ready=True)
        try:
            if self.config.verify_role:
                verify_dbapi_role(dbapi_connection)
            state.signer = self._signer(dbapi_connection, state.seals)
        except TenancyError:
            dbapi_connection.close()
            raise
        self.adapter.arm(dbapi_connection, state)

    def _signer(self, dbapi_connection: Any, seals: dict[str, Sealed]) -> Signer | None:
        """Sealing: a signer bound to the connection's backend, once the driver's word for it is confirmed.

        The driver learns its backend's pid when it connects; a pooler in between (PgBouncer) hands it
        a pid of its own, and its transactions may run on other backends than the one a signature names.
        """
        seal, render = self.config.seal, self._seal_sql
        if seal is None or render is None:
            return None
        cursor = dbapi_connection.cursor()
        try:
            sent = time.time()
            cursor.execute(_BACKEND_SQL)
            pid, server_time = cursor.fetchone()
            received = time.time()
        finally:
            cursor.close()
            dbapi_connection.rollback()
        driver_pid = self.adapter.backend_pid(dbapi_connection)
        if pid != driver_pid:
            raise ConfigurationError(
                f"sealing needs direct connections to PostgreSQL: the driver was told backend {driver_pid}, "
                f"the server runs this session as {pid} (a pooler such as PgBouncer sits between, and its "
                "transactions can run on backends a signature does not name)"
            )
        return signer(seal, pid, float(server_time) - (sent + received) / 2, render, seals)

    def _checked(self, run: Any) -> Any:
        """``run`` (a dialect's ``do_execute`` or ``do_executemany``), reading the statement and the binding
        first; the driver adapter then checks the statement as it is sent. A closure with ``run``'s own
        signature: what it reads per statement is local, and no argument tuple is built per call."""
        state_of, vetted, verdict_of = self._state_of, self._vetted, self._verdict
        resolved, resolve, now = self.resolved, self.resolve, time.time
        isolation, autocommit, arm_late = self._isolation, self._autocommit, self._arm_late

        def checked(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
            try:
                state = state_of(cursor)
            except AttributeError:  # a driver connection made before instrument()
                state = None
            if state is None or state.tenancy is not self:
                state = arm_late(context)
            if state.ready:
                verdict = vetted.get(statement)
                if verdict is not CLEAN:
                    verdict = verdict_of(statement, parameters)
                binding = current_binding()
                resolution = resolved(binding)
                if resolution is None or resolution[2] is not type(binding):
                    resolution = resolve(binding)  # NoTenantError, InvalidTenantError: nothing is sent
                value = resolution[0]
                if state.signer is not None and value:
                    sealed = state.seals.get(value)
                    if sealed is None or sealed[0] <= now():
                        state.signer(value)  # a key that cannot be read: nothing is sent (BEGIN reuses it)
                if verdict is not CLEAN and verdict.session_state:
                    state.mark_dirty(value)
                if isolation(cursor) == autocommit:
                    raise autocommit_refused()
            run(cursor, statement, parameters, context)

        return checked

    def _checked_no_params(self, run: Any) -> Any:
        """``_checked`` for the dialect's ``do_execute_no_params``, whose statements have no parameters."""
        checked = self._checked(lambda cursor, statement, _, context: run(cursor, statement, context))

        def checked_no_params(cursor: Any, statement: str, context: Any = None) -> None:
            checked(cursor, statement, None, context)

        return checked_no_params

    def _arm_late(self, context: Any) -> ConnectionState:
        """Govern a connection made before ``instrument()`` (or under another instrumentation) from now on."""
        dbapi_connection = context.root_connection.connection.dbapi_connection
        if self.config.seal is not None:
            raise ConfigurationError(
                "a connection made before instrument(seal=...) has no signer for its backend; "
                "instrument the engine before its first use"
            )
        if self.adapter.in_transaction(dbapi_connection):
            raise TenancyError(
                "this connection was opened before instrument() and is inside a transaction whose tenant "
                "pgtenancy cannot know; roll it back, or instrument the engine before its first use"
            )
        state = ConnectionState(self, ready=True)
        self.adapter.arm(dbapi_connection, state)
        return state


class _EventLevel(_Listeners):
    """Other drivers: SQLAlchemy events apply the tenant at ``begin`` and check each statement.

    Not atomic with sending (a connection shared by concurrent tasks is not guarded), hence the
    ``FallbackWarning``; a statement in a transaction that carries no tenant is refused.
    """

    def __init__(self, config: TenancyConfig, dialect: Dialect) -> None:
        super().__init__(config, dialect)
        self._listeners = (
            ("begin", self._on_begin, False),
            ("before_cursor_execute", self._on_statement, False),
            ("commit", self._on_end, False),
            ("rollback", self._on_end, False),
            ("connect", self._on_connect, False),
        )

    @staticmethod
    def _renderer(mode: Mode) -> Any:
        """A separate statement, even for ``mode="begin"``: ``SET LOCAL`` for Citus, else ``set_config``."""
        return set_local_renderer if mode == "set_local" else set_config_renderer

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        """A new DBAPI connection has not been role-checked yet."""
        record.info.pop(_VERIFIED, None)

    def _on_begin(self, conn: Connection) -> None:
        """Check, then apply the bound tenant before the transaction's first statement."""
        info = conn.info
        info.pop(_APPLIED, None)
        binding = current_binding()
        value, apply, _ = self.resolve(binding)
        if getattr(conn.connection.dbapi_connection, "autocommit", False):
            raise autocommit_refused()
        info[_APPLYING] = True  # pgtenancy's own statements: the role check and applying the tenant
        try:
            if self.config.verify_role and not info.get(_VERIFIED):
                _verify_role(conn)
                info[_VERIFIED] = True
            conn.exec_driver_sql(apply)
        finally:
            del info[_APPLYING]
        info[_APPLIED] = (
            binding,
            value,
        )  # not set when applying failed: the transaction's statements are refused

    def _on_statement(
        self, conn: Connection, cursor: Any, statement: str, parameters: Any, *args: Any
    ) -> None:
        info = conn.info
        applied = info.get(_APPLIED)
        if applied is None:
            if info.get(_APPLYING):
                return
            raise NoTenantError(
                "this transaction carries no tenant (applying it failed, or it was not begun by SQLAlchemy); "
                "roll it back and begin a new one"
            )
        self._verdict(statement, parameters)
        binding = current_binding()
        if binding is not applied[0] and self.resolve(binding)[0] != applied[1]:
            raise TenantSwitchError(
                "this transaction was begun for another tenant than the one bound now; "
                "use one Session/Connection per tenant context and do not share it across tasks"
            )

    def _on_end(self, conn: Connection) -> None:
        """The transaction is over: forget its tenant (an invalidated connection has nothing to forget)."""
        if not conn.invalidated:
            conn.info.pop(_APPLIED, None)
