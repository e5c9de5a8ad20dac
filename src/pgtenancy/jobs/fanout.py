"""Work over many tenants, one job each, and work that must not inherit the tenant it was started under."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import TypeVar

from pgtenancy.config import TenantId
from pgtenancy.context import tenant_context, unbound

__all__ = ["detached", "for_each_tenant", "for_each_tenant_async", "run_in_executor"]

T = TypeVar("T")

detached = unbound  # start long-lived tasks and threads in ``with detached():``: they inherit no tenant


def for_each_tenant(tenants: Iterable[TenantId], enqueue: Callable[[TenantId], T]) -> list[T]:
    """Call ``enqueue(tenant)`` once per distinct tenant, each inside its own ``tenant_context``.

    ``enqueue`` sends one job (``task.delay(...)``), which captures that tenant and no other.
    """
    done = []
    for tenant in dict.fromkeys(tenants):
        with tenant_context(tenant):
            done.append(enqueue(tenant))
    return done


async def for_each_tenant_async(
    tenants: Iterable[TenantId], enqueue: Callable[[TenantId], Awaitable[T]]
) -> list[T]:
    """``for_each_tenant`` for async enqueueing (``await enqueue_job(pool, ...)``), one tenant at a time."""
    done = []
    for tenant in dict.fromkeys(tenants):
        async with tenant_context(tenant):
            done.append(await enqueue(tenant))
    return done


async def run_in_executor(executor: Executor | None, function: Callable[..., T], *args: object) -> T:
    """``loop.run_in_executor``, with the caller's context (its tenant) copied into the worker thread.

    ``loop.run_in_executor`` does not copy the context: the function would run with no tenant bound (a
    ``NoTenantError``) or, in a reused thread, with whatever a previous caller left there.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(executor, functools.partial(context.run, function, *args))
