"""pgtenancy's own record of one driver connection, read and written under the driver's lock.

The driver adapters call ``begin()`` as the driver sends ``BEGIN`` and ``check()`` before every
statement sent inside a transaction, both while they hold the lock that orders the connection's
messages. So the tenant a statement is checked against is the tenant of the transaction it is
sent in, whatever other tasks or threads sharing the connection do meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol, TypeAlias

from pgtenancy.context import current_binding
from pgtenancy.errors import AutocommitError, NoTenantError, TenancyError, TenantSwitchError
from pgtenancy.seal import Sealed, Signer

__all__ = ["RESET_SESSION", "Applied", "ConnectionState", "Resolution", "Tenancy", "autocommit_refused"]

RESET_SESSION: Final = (
    "CLOSE ALL",
    "UNLISTEN *",
    "SELECT pg_catalog.pg_advisory_unlock_all()",
    "DISCARD TEMP",
    "RESET ALL",
)
"""Drops what a session keeps between transactions, short of the driver's own prepared statements."""


Resolution = tuple[str, str, type]
"""A binding's canonical value, the SQL applying it, and the binding's type (the cache is keyed by both)."""


class Tenancy(Protocol):
    """What a connection's state needs from the engine's instrumentation."""

    active: bool  # False once ``uninstrument()`` ran: the connection is no longer governed
    separate: bool  # the tenant is applied by a statement of its own after BEGIN, not in BEGIN's message
    resolved: Callable[[object], Resolution | None]  # the cache alone: check the type of what it returns

    def resolve(self, binding: object) -> Resolution:
        """The binding's resolution; raises a ``TenancyError`` if it cannot apply."""
        ...


Applied: TypeAlias = tuple[object, str | None, TenancyError | None]
"""The tenant one transaction carries, fixed by the BEGIN that opened it: the context's binding object when
BEGIN was sent; its canonical value ('' for no tenant, ``None`` when the transaction carries none); why the
binding could not be applied (raised at the first statement). A plain tuple: one is built per transaction,
and a named tuple's constructor costs five times as many instructions."""

_UNGOVERNED: Final[Applied] = (None, None, None)
_now: Final = time.time  # the clock seals are kept fresh by (``pgtenancy.seal.signer``'s)


class ConnectionState:
    """One driver connection: the instrumentation governing it, and what its open transaction carries."""

    __slots__ = ("applied", "dirty", "ready", "seals", "signer", "tenancy")

    def __init__(self, tenancy: Tenancy, *, ready: bool, signer: Signer | None = None) -> None:
        self.tenancy = tenancy
        self.ready = ready  # False while SQLAlchemy's own set-up runs on a new connection
        self.signer = signer  # sealing: seals a tenant value for this backend, recording it in ``seals``
        self.seals: dict[str, Sealed] = {}  # per tenant value: the statement carrying its seal, while fresh
        self.applied: Applied | None = None  # None: no transaction that pgtenancy opened is open
        self.dirty: str | None = None  # the tenant value under which session state was created

    def begin(self) -> tuple[str | None, str | None, str | None]:
        """BEGIN is being sent: record the tenant it carries; return (reset SQL, SQL applying the tenant,
        SQL applying its seal when the engine seals).

        Never raises, so that a BEGIN SQLAlchemy sends for itself (a pool ping) still goes out; a
        binding that cannot be applied is raised at the transaction's first statement instead.
        """
        tenancy = self.tenancy
        if not (self.ready and tenancy.active):
            self.applied = _UNGOVERNED
            return None, None, None
        binding = current_binding()
        resolution = tenancy.resolved(binding)
        if resolution is None or resolution[2] is not type(binding):
            try:
                resolution = tenancy.resolve(binding)
            except TenancyError as error:
                self.applied = (binding, None, error)
                return None, None, None
        value, apply, _ = resolution
        seal = None
        if self.signer is not None and value:
            sealed = self.seals.get(value)
            if sealed is None or sealed[0] <= _now():
                try:
                    sealed = self.signer(value)
                except TenancyError as error:  # the key could not be read: the transaction is refused
                    self.applied = (binding, None, error)
                    return None, None, None
            seal = sealed[1]
        self.applied = (binding, value, None)
        dirty = self.dirty
        if dirty is None or dirty == value:
            return None, apply, seal
        self.dirty = None  # another tenant's session state is dropped before its transaction begins
        return "; ".join(RESET_SESSION), apply, seal

    def check(self) -> None:
        """A statement is about to be sent in the open transaction: refused unless it carries the binding."""
        applied = self.applied  # (binding, value, error)
        if applied is not None and (current_binding() is not applied[0] or applied[1] is None):
            self._check(applied)

    def check_opened(self) -> None:
        """``check()`` when no BEGIN is sent now: a transaction that pgtenancy did not open is refused."""
        if self.applied is None:
            if self.ready and self.tenancy.active:
                raise TenancyError(
                    "this transaction was not begun by pgtenancy and carries no tenant; "
                    "let SQLAlchemy begin transactions (no BEGIN sent as SQL)"
                )
            return
        self.check()

    def _check(self, applied: Applied) -> None:
        tenancy = self.tenancy
        if not (self.ready and tenancy.active):
            return
        _, value, error = applied
        if error is not None:
            raise type(error)(*error.args)
        if value is None:
            raise NoTenantError(
                "this transaction began before the connection was ready and carries no tenant; "
                "commit or roll it back first"
            )
        binding = current_binding()
        if tenancy.resolve(binding)[0] != value:
            raise TenantSwitchError(
                "this transaction was begun for another tenant than the one bound now; "
                "use one Session/Connection per tenant context and do not share it across tasks"
            )

    def failed(self) -> None:
        """The statement applying the tenant after BEGIN failed: refuse the transaction's statements."""
        self.applied = (
            None,
            None,
            NoTenantError("applying the tenant to this transaction failed; roll it back first"),
        )

    def mark_dirty(self, value: str) -> None:
        """The transaction created state that outlives it (temp tables, session settings...)."""
        self.dirty = value


def autocommit_refused() -> AutocommitError:
    """The error for a statement a governed connection would send in AUTOCOMMIT mode: no BEGIN carries it."""
    return AutocommitError(
        "an AUTOCOMMIT connection cannot carry a transaction-local tenant; "
        "use the default isolation level on tenant engines"
    )
