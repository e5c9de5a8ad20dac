"""An awaitable that is already done, for ``__aenter__``/``__aexit__`` that have nothing to wait for.

``async with`` awaits what they return; returning ``DONE`` from a plain method instead of being a
coroutine spares a coroutine object and frame on every entry and exit of pgtenancy's hot paths.
"""

from __future__ import annotations

import functools
from typing import Final

__all__ = ["DONE"]


class _Done:
    """Awaiting it returns ``None`` at once: ``__await__`` gives an iterator that is already exhausted."""

    __slots__ = ()
    __await__ = functools.partial(iter, ())  # not a descriptor: called with no arguments


DONE: Final = _Done()
