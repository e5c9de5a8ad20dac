"""Sending the tenant with the transaction's own BEGIN, so binding costs no extra round trip.

asyncpg: connections are made from a ``Connection`` subclass (asyncpg's documented
``connection_class``) whose ``execute`` appends a pending ``set_config`` to the ``BEGIN`` that
SQLAlchemy's adapter sends before the transaction's first statement, as one simple-query message.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Dialect, String

from pgtenancy.errors import ConfigurationError

__all__ = ["begin_suffix", "prepare_connect", "queue_with_begin", "supports_begin"]

_SUFFIX = "_pgtenancy_begin_suffix"
_subclasses: dict[type, type] = {}


def supports_begin(dialect: Dialect) -> bool:
    """Whether pgtenancy can send the tenant with BEGIN on this dialect's driver."""
    return dialect.driver == "asyncpg"


def prepare_connect(dialect: Dialect, connect_params: dict[str, Any]) -> None:
    """``do_connect`` hook: make asyncpg build connections that can carry a pending suffix."""
    if dialect.driver == "asyncpg":
        import asyncpg

        base = connect_params.get("connection_class", asyncpg.Connection)
        connect_params["connection_class"] = _begin_aware(base)


def begin_suffix(dialect: Dialect, setting: str, value: str) -> str:
    """``SELECT set_config(...)`` with both arguments rendered as literals by the dialect.

    ``setting`` matched the setting-name pattern and ``value`` is a validated tenant id, so neither
    can hold a quote; the dialect's literal rendering is defence in depth.
    """
    render = String().literal_processor(dialect)
    if render is None:
        raise ConfigurationError(f"dialect {dialect.name!r} cannot render string literals")
    return "SELECT pg_catalog.set_config(" + render(setting) + ", " + render(value) + ", true);"


def queue_with_begin(conn: Connection, suffix: str | None) -> bool:
    """Attach ``suffix`` to the next BEGIN on ``conn``'s driver connection (``None`` clears it).

    Returns False when the driver connection cannot carry it (made before ``instrument()``).
    """
    raw = conn.connection.driver_connection
    if not hasattr(type(raw), _SUFFIX):
        return False
    setattr(raw, _SUFFIX, suffix)
    return True


def _begin_aware(base: type) -> type:
    """A subclass of asyncpg's ``Connection`` class ``base`` that appends a pending suffix to BEGIN."""
    if hasattr(base, _SUFFIX):
        return base
    subclass = _subclasses.get(base)
    if subclass is None:

        class BeginAwareConnection(base):  # type: ignore[misc, valid-type]
            _pgtenancy_begin_suffix: str | None = None

            async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
                suffix = self._pgtenancy_begin_suffix
                if suffix is not None and not args and query.startswith("BEGIN"):
                    self._pgtenancy_begin_suffix = None
                    query = query + " " + suffix
                return await super().execute(query, *args, timeout=timeout)

        subclass = _subclasses[base] = BeginAwareConnection
    return subclass
