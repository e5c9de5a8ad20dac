"""Opt-in shard pruning: add ``tenant_column = <bound tenant>`` to every ORM query of a session.

Row-level security stays the wall; this predicate is only the speed. On Citus a query whose WHERE
clause pins the distribution column is routed to one shard, while the same query filtered by RLS
alone fans out to every shard. With no tenant bound (or inside ``without_tenant()``) nothing is
added and RLS alone decides, as everywhere else.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator
from typing import Any, Final, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, sessionmaker, with_loader_criteria

from pgtenancy.config import validate_tenant_id
from pgtenancy.context import current_tenant_id
from pgtenancy.errors import ConfigurationError
from pgtenancy.orm import TENANT_INFO_KEY

__all__ = ["disable_tenant_criteria", "enable_tenant_criteria", "tenant_criteria_enabled"]

Target = TypeVar("Target", sessionmaker[Any], async_sessionmaker[Any], type[Session])

_EVENT: Final = "do_orm_execute"
_NO_TENANT_COLUMN: Final = ("", "")
_tenant_attributes: weakref.WeakKeyDictionary[Mapper[Any], tuple[str, str]] = weakref.WeakKeyDictionary()


def enable_tenant_criteria(target: Target) -> Target:
    """Make every ORM SELECT, UPDATE and DELETE of ``target``'s sessions filter on the bound tenant.

    Each mapped class with a tenant column (``TenantMixin`` / ``tenant_column()``) gets
    ``with_loader_criteria(cls, cls.<tenant column> == <bound tenant>, include_aliases=True)``, so
    Citus can route the statement to the tenant's shard. Idempotent; returns ``target``.

    :param target: a ``sessionmaker``, an ``async_sessionmaker`` (its sync session class gets a
        dedicated subclass, so other factories are untouched) or a ``Session`` subclass.
    """
    listened = _listen_target(target, create=True)
    if not event.contains(listened, _EVENT, _add_tenant_criteria):
        event.listen(listened, _EVENT, _add_tenant_criteria)
    return target


def disable_tenant_criteria(target: sessionmaker[Any] | async_sessionmaker[Any] | type[Session]) -> None:
    """Stop adding the tenant predicate to ``target``'s sessions (a no-op where it was not enabled)."""
    listened = _listen_target(target, create=False)
    if listened is not None and event.contains(listened, _EVENT, _add_tenant_criteria):
        event.remove(listened, _EVENT, _add_tenant_criteria)


def tenant_criteria_enabled(target: sessionmaker[Any] | async_sessionmaker[Any] | type[Session]) -> bool:
    """Whether ``enable_tenant_criteria`` is in effect for ``target``."""
    listened = _listen_target(target, create=False)
    return listened is not None and event.contains(listened, _EVENT, _add_tenant_criteria)


class _CriteriaSession(Session):
    """The sync session class given to an ``async_sessionmaker``, so the listener stays on that factory."""


def _listen_target(target: object, *, create: bool) -> Any:
    """The object the ``do_orm_execute`` listener belongs on (``None`` if there is none yet)."""
    if isinstance(target, sessionmaker):
        return target
    if isinstance(target, async_sessionmaker):
        session_class = target.kw.get("sync_session_class", Session)
        if not issubclass(session_class, _CriteriaSession):
            if not create:
                return None
            session_class = type("TenantCriteriaSession", (_CriteriaSession, session_class), {})
            target.configure(sync_session_class=session_class)
        return session_class
    if isinstance(target, type) and issubclass(target, Session):
        return target
    raise ConfigurationError(
        f"cannot enable tenant criteria on {type(target).__name__}: pass a sessionmaker, "
        "an async_sessionmaker or a Session subclass"
    )


def _add_tenant_criteria(state: ORMExecuteState) -> None:
    """Add the bound tenant's predicate for every tenant-scoped class the statement's registries map."""
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # these loads inherit the criteria of the query that loaded the objects
    tenant = current_tenant_id()
    if tenant is None:
        return
    criteria = [
        with_loader_criteria(
            mapper.class_,
            getattr(mapper.class_, key) == _python_value(tenant, key_type),
            include_aliases=True,
        )
        for mapper, key, key_type in _tenant_mappers([*state.all_mappers, state.bind_mapper])
    ]
    if criteria:
        state.statement = state.statement.options(*criteria)


def _tenant_mappers(mappers: list[Mapper[Any] | None]) -> Iterator[tuple[Mapper[Any], str, str]]:
    """Every mapper of the registries involved that has a tenant column (not repeated for subclasses)."""
    registries = {mapper.registry for mapper in mappers if mapper is not None}
    for registry in registries:
        for mapper in registry.mappers:
            key, key_type = _tenant_attribute(mapper)
            if key and not (mapper.inherits is not None and _tenant_attribute(mapper.inherits)[0]):
                yield mapper, key, key_type


def _tenant_attribute(mapper: Mapper[Any]) -> tuple[str, str]:
    """The attribute name and key type of ``mapper``'s tenant column, or ``("", "")`` without one."""
    found = _tenant_attributes.get(mapper)
    if found is None:
        found = _NO_TENANT_COLUMN
        for prop in mapper.column_attrs:
            info = next((column.info.get(TENANT_INFO_KEY) for column in prop.columns), None)
            if info:
                found = (prop.key, info.get("key_type", "uuid"))
                break
        _tenant_attributes[mapper] = found
    return found


def _python_value(tenant: object, key_type: str) -> object:
    """The bound tenant validated for the column's key type, as the Python value its type binds."""
    canonical = validate_tenant_id(tenant, key_type)
    if key_type == "uuid":
        return uuid.UUID(canonical)
    if key_type == "int":
        return int(canonical)
    return canonical
