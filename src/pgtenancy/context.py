"""Binding a tenant to the current execution context (thread, asyncio task and the tasks it starts)."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

from pgtenancy.awaitables import DONE
from pgtenancy.config import TenantId, validate_tenant_id
from pgtenancy.errors import InvalidTenantError

__all__ = [
    "NO_TENANT",
    "Binding",
    "current_binding",
    "current_tenant_id",
    "tenant_context",
    "unbound",
    "without_tenant",
]


class _NoTenant:
    """Marker bound by ``without_tenant()``: the database must see no tenant at all."""

    _instance: _NoTenant | None = None

    def __new__(cls) -> _NoTenant:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_TENANT"


NO_TENANT: Final = _NoTenant()

_binding: contextvars.ContextVar[TenantId | _NoTenant | None] = contextvars.ContextVar(
    "pgtenancy_tenant", default=None
)


current_binding: Final[Callable[[], TenantId | _NoTenant | None]] = _binding.get
"""The raw binding: a tenant id, ``NO_TENANT`` inside ``without_tenant()``, or ``None`` if unbound.

The context variable's own ``get``: read before every statement, so no Python frame of its own."""


def current_tenant_id() -> TenantId | None:
    """The tenant bound to the current context, or ``None`` (unbound or inside ``without_tenant()``)."""
    value = _binding.get()
    return None if value is NO_TENANT else value  # type: ignore[return-value]


class Binding:
    """Context manager (sync and async) that binds a value and restores the previous one on exit.

    One token, not a stack: entered once per request or operation, it is kept cheap. Entering it
    again while it is entered is refused, as that would leave the outer binding in place on exit.
    ``with ... as t`` gives the bound id; ``async with`` binds without a coroutine and gives ``None``
    (read ``current_tenant_id()``).
    """

    __slots__ = ("_token", "_value")
    _token: contextvars.Token[TenantId | _NoTenant | None] | None
    _value: TenantId | _NoTenant | None

    def __enter__(self) -> TenantId | None:
        if self._token is not None:
            raise RuntimeError("this tenant context is already entered: create one per with block")
        self._token = _binding.set(self._value)
        return None if self._value is NO_TENANT else self._value  # type: ignore[return-value]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            _binding.reset(self._token)  # type: ignore[arg-type]
        except ValueError:
            self._token = None
            raise _exited_elsewhere() from None
        self._token = None

    def __aenter__(self) -> Awaitable[None]:  # no coroutine per call: bound now, then awaited as done
        if self._token is not None:
            raise RuntimeError("this tenant context is already entered: create one per with block")
        self._token = _binding.set(self._value)
        return DONE

    def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Awaitable[None]:
        try:
            _binding.reset(self._token)  # type: ignore[arg-type]
        except ValueError:
            self._token = None
            raise _exited_elsewhere() from None
        self._token = None
        return DONE


def _exited_elsewhere() -> RuntimeError:
    """The error for a binding left in another context than the one it was entered in (its token's)."""
    return RuntimeError(
        "this tenant context is exited in another context than it was entered in, so its binding never "
        "reached the code in between. A sync (def) generator dependency in FastAPI is entered and exited "
        "in thread-pool threads: write the dependency that binds the tenant as async def (or let "
        "pgtenancy.asgi.TenantMiddleware bind it)"
    )


_PLAIN_IDS: Final = frozenset({str, int, uuid.UUID})  # one set lookup for the common case; subclasses checked


def tenant_context(tenant_id: TenantId, *, key_type: str | None = None) -> Binding:
    """Bind ``tenant_id`` for the enclosed block (``with`` or ``async with``); inner bindings win.

    :param tenant_id: a UUID, int or str; it is validated against the engine's ``key_type`` when a
        transaction begins, or right here when ``key_type`` is given.
    :param key_type: optional ``"uuid"``, ``"int"`` or ``"str"`` to validate (and canonicalise) now.
    """
    if key_type is not None:
        tenant_id = validate_tenant_id(tenant_id, key_type)
    elif type(tenant_id) not in _PLAIN_IDS and (
        isinstance(tenant_id, bool) or not isinstance(tenant_id, (str, int, uuid.UUID))
    ):
        raise InvalidTenantError(
            f"a tenant id must be a str, int or UUID, not {type(tenant_id).__name__}; "
            "use without_tenant() for work on behalf of no tenant"
        )
    binder = Binding()  # no __init__: filled in here, one frame less per request
    binder._value, binder._token = tenant_id, None
    return binder


def without_tenant() -> Binding:
    """Run the enclosed block on behalf of no tenant: RLS then returns no rows and rejects writes."""
    binder = Binding()
    binder._value, binder._token = NO_TENANT, None
    return binder


def unbound() -> Binding:
    """Run the enclosed block with nothing bound, as outside any request: tasks started in it (and the
    statements they send) inherit no tenant. For long-lived work started from inside a request."""
    binder = Binding()
    binder._value, binder._token = None, None
    return binder
