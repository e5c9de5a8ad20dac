"""Sending the tenant with the transaction's own BEGIN, so binding costs no extra round trip.

asyncpg: connections are made from a ``Connection`` subclass (asyncpg's documented
``connection_class``) whose ``execute`` appends a pending ``SET LOCAL`` to the ``BEGIN`` that
SQLAlchemy's adapter sends before the transaction's first statement, as one simple-query message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Dialect, String

from pgtenancy.errors import ConfigurationError

__all__ = ["Queue", "prepare_connect", "set_local_renderer", "supports_begin"]

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

    A queued statement that no BEGIN took (the driver was already in a transaction) is never sent
    once its queue is closed, so it cannot reach a transaction pgtenancy no longer governs.
    """

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True

    def put(self, raw: Any, suffix: str) -> bool:
        """Attach ``suffix`` to the next BEGIN on driver connection ``raw``.

        Returns False when the driver connection cannot carry it (made before ``instrument()``).
        """
        if not hasattr(type(raw), _SUFFIX):
            return False
        setattr(raw, _SUFFIX, (self, suffix))
        return True


def _begin_aware(base: type) -> type:
    """A subclass of asyncpg's ``Connection`` class ``base`` that appends a pending suffix to BEGIN."""
    if hasattr(base, _SUFFIX):
        return base
    subclass = _subclasses.get(base)
    if subclass is None:

        class BeginAwareConnection(base):  # type: ignore[misc, valid-type]
            _pgtenancy_begin_suffix: tuple[Queue, str] | None = None

            async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
                queued = self._pgtenancy_begin_suffix
                if queued is not None and not args and query.startswith("BEGIN"):
                    self._pgtenancy_begin_suffix = None
                    if queued[0].open:
                        query = query + " " + queued[1]
                return await super().execute(query, *args, timeout=timeout)

        subclass = _subclasses[base] = BeginAwareConnection
    return subclass
