"""arq: the tenant travels with every job (extra ``arq``: ``pip install 'pgtenancy[arq]'``).

arq jobs have no message headers, so the binding travels in one reserved keyword argument,
``pgtenancy_headers`` (``HEADERS_KWARG``): ``enqueue_job`` adds it to the job's keyword arguments, and
``tenant_job`` takes it out again on the worker and runs the function's body inside ``restore(...)``,
so the function itself never receives it. There is no ``on_job_start`` hook: arq passes that hook
the job's context only, so it can neither read nor remove the argument, and an error it raises escapes
arq's job handling and stops the worker (arq 0.28), leaving the job queued for the next one. A function
that cannot be decorated where it is defined is wrapped where it is registered:
``functions = [tenant_job(vendor.job)]`` (the wrapper keeps its name).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

from pgtenancy.config import validate_key_type
from pgtenancy.errors import ConfigurationError, JobHeaderError
from pgtenancy.jobs.carrier import Key, capture, restore

try:
    from arq.utils import timestamp_ms, to_ms, to_unix_ms
except ImportError as exc:
    raise ImportError("pgtenancy.jobs.arq needs arq: pip install 'pgtenancy[arq]'") from exc

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from arq.jobs import Job

__all__ = ["HEADERS_KWARG", "enqueue_job", "tenant_job"]

HEADERS_KWARG: Final = "pgtenancy_headers"  # the keyword argument that carries the headers to the worker

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])  # the wrapper has the function's type


async def enqueue_job(
    pool: ArqRedis, function: str, *args: Any, _signing_key: Key | None = None, **kwargs: Any
) -> Job | None:
    """``pool.enqueue_job(function, *args, **kwargs)`` with the current binding in ``pgtenancy_headers``.

    Raises ``NoTenantError`` when nothing is bound: enqueue inside ``tenant_context`` (or
    ``without_tenant()`` for a job on behalf of no tenant). arq's own options (``_job_id``,
    ``_defer_by``, ``_expires``...) pass through.

    :param _signing_key: sign the headers for this job's id (generated here unless ``_job_id`` is
        given), valid for as long as arq would still start the job (its ``_expires``, else its
        deferral plus the pool's ``expires_extra_ms``, a day by default).
    """
    if HEADERS_KWARG in kwargs:
        raise ConfigurationError(
            f"{HEADERS_KWARG!r} is reserved for the tenant headers: enqueue_job() captures them itself"
        )
    if _signing_key is None:
        headers = capture()
    else:
        if kwargs.get("_job_id") is None:
            kwargs["_job_id"] = uuid.uuid4().hex
        headers = capture(signing_key=_signing_key, job_id=kwargs["_job_id"], ttl=_lifetime(pool, kwargs))
    kwargs[HEADERS_KWARG] = headers
    return await pool.enqueue_job(function, *args, **kwargs)


def _lifetime(pool: ArqRedis, options: Mapping[str, Any]) -> float:
    """Seconds arq keeps the job startable, computed as arq does: ``_expires``, else deferral plus extra."""
    expires = to_ms(options.get("_expires"))
    if expires:
        return float(expires) / 1000
    until = options.get("_defer_until")
    if until is not None:
        deferral = to_unix_ms(until) - timestamp_ms()
    else:
        deferral = to_ms(options.get("_defer_by")) or 0
    return float(max(deferral, 0) + pool.expires_extra_ms) / 1000


@overload
def tenant_job(function: F, /) -> F: ...


@overload
def tenant_job(
    *, key_type: str = "uuid", signing_key: Key | None = None, tenant_free: bool = False
) -> Callable[[F], F]: ...


def tenant_job(
    function: F | None = None,
    /,
    *,
    key_type: str = "uuid",
    signing_key: Key | None = None,
    tenant_free: bool = False,
) -> F | Callable[[F], F]:
    """Run an arq worker function (``async def job(ctx, ...)``) as the tenant its job was enqueued for.

    The headers are checked before the body runs: missing (``NoTenantError``), malformed, or with a
    signing key unsigned, forged, signed for another job or expired (``JobHeaderError``), or a tenant
    id that is not a ``key_type`` (``InvalidTenantError``) fail the job without running it. Used bare
    (``@tenant_job``) or with options (``@tenant_job(signing_key=...)``).

    :param key_type: the key type of the engine the job uses; the tenant id must be one.
    :param signing_key: require headers signed with this key for this job's ``ctx["job_id"]``.
    :param tenant_free: a job enqueued without headers (a cron job, ``pool.enqueue_job``) runs inside
        ``without_tenant()`` instead of failing.
    """
    validate_key_type(key_type)

    def decorate(function: F) -> F:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(f"arq runs coroutine functions: {function!r} is not an async def")

        @functools.wraps(function)
        async def run(ctx: Mapping[str, Any], /, *args: Any, **kwargs: Any) -> Any:
            headers = kwargs.pop(HEADERS_KWARG, None)
            if headers is not None and not isinstance(headers, Mapping):
                raise JobHeaderError("the job's tenant headers are not a mapping")
            binding = restore(
                headers,
                key_type=key_type,
                signing_key=signing_key,
                job_id=ctx.get("job_id"),
                tenant_free=tenant_free,
            )
            async with binding:
                return await function(ctx, *args, **kwargs)

        return cast(F, run)

    return decorate if function is None else decorate(function)
