"""ORM sessions: objects loaded for one tenant are never returned to another.

A Session keeps the objects it loaded in its identity map, keyed by primary key, across commits when
``expire_on_commit=False``; ``session.get()`` answers from that map without SQL. A session reused by
another tenant (a module-level session, one cached on the app) would so return the previous tenant's
objects. pgtenancy gives each session that begins a transaction on an instrumented engine an identity
map that remembers the tenant its objects were loaded for; when the session is read or written under
another tenant (or none), that tenant's persistent objects are expunged first (pending objects stay),
and SQLAlchemy loads what it needs anew, under the new tenant's row-level security.

Private names of SQLAlchemy relied on (verified with 2.0.50, 2.0.58 and 2.1.9):
``sqlalchemy.orm.identity._WeakInstanceDict`` (``WeakInstanceDict`` in 2.0; its ``get``, ``__getitem__``,
``__contains__``, ``add``, ``_add_unpresent``, ``replace``) and ``Session._expunge_states``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction, identity

from pgtenancy.context import current_binding
from pgtenancy.errors import TenancyError

__all__ = ["PRIVATE_NAMES", "forget_engine", "guard_sessions"]

PRIVATE_NAMES: Final = (
    "sqlalchemy.orm.identity._WeakInstanceDict (2.0: WeakInstanceDict)",
    "sqlalchemy.orm.Session._expunge_states",
)
Resolver = Callable[[object], tuple[str, str, type]]
_resolvers: weakref.WeakKeyDictionary[Engine, Resolver] = weakref.WeakKeyDictionary()


def guard_sessions(engine: Engine, resolve: Resolver) -> None:
    """Guard the identity map of every Session that begins a transaction on ``engine``.

    :param resolve: the engine's binding resolver (binding -> canonical value, SQL).
    """
    _resolvers[engine] = resolve
    if not event.contains(Session, "after_begin", _on_begin):
        event.listen(Session, "after_begin", _on_begin)


def forget_engine(engine: Engine) -> None:
    """Stop guarding new sessions on ``engine`` (``uninstrument()``)."""
    _resolvers.pop(engine, None)


def _on_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    """Give the session a tenant-aware identity map the first time it begins on an instrumented engine."""
    if isinstance(session.identity_map, _TenantIdentityMap):
        return
    engine = connection.engine
    resolve = _resolvers.get(getattr(engine, "_proxied", engine))  # execution_options() copies: their origin
    if resolve is None:
        return
    guarded = _TenantIdentityMap(session, resolve)
    for state in session.identity_map.all_states():
        guarded._add_unpresent(state, state.key)
    session.identity_map = guarded


_WeakInstanceDict: Any = next(  # SQLAlchemy 2.1 names it _WeakInstanceDict, 2.0 WeakInstanceDict
    getattr(identity, name) for name in ("_WeakInstanceDict", "WeakInstanceDict") if hasattr(identity, name)
)


class _TenantIdentityMap(_WeakInstanceDict):  # type: ignore[misc]
    """An identity map that drops its objects when used under another tenant than they were loaded for."""

    def __init__(self, session: Session, resolve: Resolver) -> None:
        super().__init__()
        self._session = weakref.ref(session)
        self._resolve = resolve
        self._binding: object = current_binding()
        self._value = self._value_of(self._binding)

    def _value_of(self, binding: object) -> str | None:
        try:
            return self._resolve(binding)[0]
        except TenancyError:
            return None  # unbound or invalid: no tenant's objects may be served

    def _guard(self) -> None:
        binding = current_binding()
        if binding is not self._binding:
            self._switch(binding)

    def _switch(self, binding: object) -> None:
        value = self._value_of(binding)
        if value is None or value != self._value:
            session = self._session()
            states = list(self.all_states())
            if session is not None and states:
                session._expunge_states(states)
        self._binding, self._value = binding, value

    def get(self, key: Any, default: Any = None) -> Any:
        self._guard()
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._guard()
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._guard()
        return bool(super().__contains__(key))

    def add(self, state: Any) -> bool:
        self._guard()
        return bool(super().add(state))

    def _add_unpresent(self, state: Any, key: Any) -> None:
        self._guard()
        super()._add_unpresent(state, key)

    def replace(self, state: Any) -> Any:
        self._guard()
        return super().replace(state)
