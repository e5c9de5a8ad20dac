"""Driver adapters: where the tenant is applied with the driver's BEGIN and checked under the driver's lock.

One private module per driver (``_asyncpg``, ``_psycopg``) implements ``Adapter`` and lists every private
name of SQLAlchemy and of the driver it relies on, with the versions verified. ``adapter_for()`` says
which one serves a dialect, or why none can.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from types import ModuleType
from typing import Any, Protocol, cast

from sqlalchemy import Dialect, String
from sqlalchemy.types import TypeEngine

from pgtenancy.drivers.state import Applied, ConnectionState, Resolution, Tenancy, autocommit_refused
from pgtenancy.errors import ConfigurationError

__all__ = [
    "Adapter",
    "Applied",
    "ConnectionState",
    "Resolution",
    "Tenancy",
    "adapter_for",
    "autocommit_refused",
    "set_config_renderer",
    "set_local_renderer",
    "unverified",
]


class Adapter(Protocol):
    """What one driver module provides to ``instrument()``."""

    NAME: str
    PRIVATE_NAMES: tuple[str, ...]
    VERIFIED: dict[str, tuple[str, str]]  # distribution: (oldest, newest) release verified

    def available(self, dialect: Dialect) -> str | None: ...  # None, or the missing names
    def connect(
        self, dialect: Dialect, make: Any, cargs: Any, cparams: dict[str, Any]
    ) -> Any: ...  # wraps it
    def arm(self, dbapi_connection: Any, state: ConnectionState) -> None: ...  # govern a connection
    def in_transaction(self, dbapi_connection: Any) -> bool: ...
    def state_getter(self, dialect: Dialect) -> Callable[[Any], ConnectionState | None]: ...
    def autocommit_getter(self, dialect: Dialect) -> tuple[Callable[[Any], object], object]: ...
    def backend_pid(self, dbapi_connection: Any) -> int: ...  # the backend pid the driver was told


def adapter_for(dialect: Dialect) -> tuple[Adapter | None, str]:
    """The adapter serving ``dialect``'s driver, or ``None`` and the reason there is none."""
    module: ModuleType
    if dialect.driver == "asyncpg":
        from pgtenancy.drivers import _asyncpg as module
    elif dialect.driver == "psycopg":
        from pgtenancy.drivers import _psycopg as module
    else:
        return (
            None,
            f"pgtenancy has no adapter for the {dialect.driver!r} driver (asyncpg and psycopg 3 have one)",
        )
    adapter = cast(Adapter, module)
    missing = adapter.available(dialect)
    if missing:
        return None, f"this SQLAlchemy or {adapter.NAME} lacks what pgtenancy's adapter relies on: {missing}"
    return adapter, ""


def unverified(adapter: Adapter) -> list[str]:
    """The installed distributions ``adapter`` relies on that are newer than the newest release verified."""
    newer = []
    for distribution, (_, newest) in adapter.VERIFIED.items():
        installed = metadata.version(distribution)
        if _release(installed) > _release(newest):
            newer.append(f"{distribution} {installed} (verified up to {newest})")
    return newer


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.1.9"`` -> ``(2, 1, 9)``; pre-releases count as theirs."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def _literal_renderer(dialect: Dialect) -> Callable[[str], str]:
    string: TypeEngine[str] = String()
    render = string.literal_processor(dialect)
    if render is None:
        raise ConfigurationError(f"dialect {dialect.name!r} cannot render string literals")
    return render


def set_local_renderer(dialect: Dialect, setting: str) -> Callable[[str], str]:
    """A function rendering ``SET LOCAL setting = 'value'`` for validated values (alone or after BEGIN).

    ``SET LOCAL`` is transaction-local like ``set_config(..., true)`` and, as a utility statement, is
    not planned: measured on the raw driver, appending it to BEGIN costs ~5 us where a ``SELECT
    set_config`` costs ~40 us. The name is quoted by the dialect, the value rendered as a literal.
    """
    render = _literal_renderer(dialect)
    prefix = "SET LOCAL " + ".".join(dialect.identifier_preparer.quote(p) for p in setting.split(".")) + " = "
    return lambda value: prefix + render(value)


def set_config_renderer(dialect: Dialect, setting: str) -> Callable[[str], str]:
    """A function rendering ``SELECT set_config('setting', 'value', true)`` for validated values."""
    render = _literal_renderer(dialect)
    prefix = "SELECT pg_catalog.set_config(" + render(setting) + ", "
    return lambda value: prefix + render(value) + ", true)"
