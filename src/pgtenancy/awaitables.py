"""An awaitable that is already done, for ``__aenter__``/``__aexit__`` that have nothing to wait for.

``async with`` awaits what they return; returning ``DONE`` from a plain method instead of being a
coroutine spares a coroutine object and frame on every entry and exit of pgtenancy's hot paths.
``DONE`` is an asyncio future holding ``None``: awaiting a done future returns its result at once,
through the C slots of asyncio's future (no ``__await__`` looked up by name, no Python frame), and
never consults its loop, so it works on any running loop.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["DONE"]


class _NoLoop:
    """The loop ``DONE`` is created with: a future asks its loop only ``get_debug()`` when created, and a
    done future with no callbacks never schedules anything on it."""

    __slots__ = ()

    def get_debug(self) -> bool:
        return False


DONE: Final[asyncio.Future[None]] = asyncio.Future(loop=_NoLoop())  # type: ignore[arg-type]
DONE.set_result(None)
