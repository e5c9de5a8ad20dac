"""Celery: the tenant travels with every task (extra ``celery``: ``pip install 'pgtenancy[celery]'``).

Where a task is sent its message headers get the current binding (``capture()``); on the worker the
binding is checked and bound again (``restore()``) before the task's body is called. Two ways in:

- ``TenantTask`` (a base class) and ``@tenant_task`` (a ``shared_task`` that uses it): the task's own
  ``apply_async`` captures, so sending with nothing bound raises ``NoTenantError`` where the mistake is;
- ``install(app)``: Celery's signals do the same for every task of the app, including tasks whose base
  class is not yours (``before_task_publish`` adds the headers, ``task_prerun``/``task_postrun`` bind
  and unbind).

The binding is held from ``task_prerun`` to ``task_postrun``, not only around the body: what the worker
sends after the body (the next task of a chain, a chord's body, link callbacks, retries) is sent as the
same tenant. A task whose headers are missing or refused fails with that error (``NoTenantError``,
``JobHeaderError``, ``InvalidTenantError``) and its body is never called.

The settings live in ``app.conf`` (``install()`` sets them from its keywords): ``pgtenancy_key_type``
(``"uuid"``), ``pgtenancy_signing_key`` (``None``: unsigned headers) and ``pgtenancy_signature_ttl``
(86400 seconds, to which a task's countdown or ETA is added).
"""

from __future__ import annotations

import functools
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, overload

from pgtenancy.config import validate_key_type
from pgtenancy.context import Binding, current_binding
from pgtenancy.errors import ConfigurationError, NoTenantError, TenancyError
from pgtenancy.jobs.carrier import BINDING, HEADERS, Key, capture, restore

try:
    from celery import Celery, Task, shared_task, signals
except ImportError as exc:
    raise ImportError("pgtenancy.jobs.celery needs Celery: pip install 'pgtenancy[celery]'") from exc

__all__ = ["KEY_TYPE", "SIGNATURE_TTL", "SIGNING_KEY", "TenantTask", "install", "tenant_task"]

KEY_TYPE: Final = "pgtenancy_key_type"  # app.conf setting: the engine's key type, "uuid" by default
SIGNING_KEY: Final = "pgtenancy_signing_key"  # app.conf setting: sign and require signed headers
SIGNATURE_TTL: Final = "pgtenancy_signature_ttl"  # app.conf setting: seconds a signature lasts
_DEFAULT_TTL: Final = 86400.0

_installed: weakref.WeakKeyDictionary[Celery, frozenset[str]] = weakref.WeakKeyDictionary()
"""The apps ``install()`` covers, each with the names of its tasks that may run with no tenant."""

_running: weakref.WeakKeyDictionary[Any, Binding | TenancyError] = weakref.WeakKeyDictionary()
"""Per task request being traced: the binding entered for it, or why none could be."""


class TenantTask(Task):  # type: ignore[misc]  # Celery ships no type information
    """A Celery task that carries the tenant it was sent under and runs as that tenant on the worker.

    ``tenant_free = True`` declares a task that may run with no tenant (a periodic task sent by beat):
    sent with nothing bound it carries no header and runs inside ``without_tenant()``.
    """

    tenant_free: ClassVar[bool] = False

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        *positional: Any,
        **options: Any,
    ) -> Any:
        """Celery's ``apply_async`` with the current binding captured into the message's headers.

        Raises ``NoTenantError`` when nothing is bound (unless the task is tenant-free): send it inside
        ``tenant_context(...)``, or ``without_tenant()`` for work on behalf of no tenant.
        """
        task_id = task_id or str(uuid.uuid4())
        start = _start_of(options.get("countdown"), options.get("eta"))
        headers = {k: v for k, v in (options.pop("headers", None) or {}).items() if k not in HEADERS}
        headers.update(_capture(self.app, task_id, start, tenant_free=self.tenant_free))
        return super().apply_async(args, kwargs, task_id, *positional, headers=headers, **options)

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Refuse the body when the task's binding was not restored (Celery calls this just before it)."""
        _admit(self.request)
        super().before_start(task_id, args, kwargs)


@overload
def tenant_task(function: Callable[..., Any], /) -> TenantTask: ...


@overload
def tenant_task(
    *, tenant_free: bool = False, **options: Any
) -> Callable[[Callable[..., Any]], TenantTask]: ...


def tenant_task(
    function: Callable[..., Any] | None = None, /, *, tenant_free: bool = False, **options: Any
) -> TenantTask | Callable[[Callable[..., Any]], TenantTask]:
    """``@shared_task`` with ``TenantTask`` as its base: ``@tenant_task`` or ``@tenant_task(bind=True, ...)``.

    :param tenant_free: the task may run with no tenant (see ``TenantTask.tenant_free``).
    :param options: Celery's task options; a ``base`` must derive from ``TenantTask``.
    """
    base = options.pop("base", TenantTask)
    if not (isinstance(base, type) and issubclass(base, TenantTask)):
        raise ConfigurationError("tenant_task(base=...) must derive from TenantTask: it carries the tenant")
    decorator: Callable[[Callable[..., Any]], TenantTask] = shared_task(
        base=base, tenant_free=tenant_free, **options
    )
    return decorator if function is None else decorator(function)


def install(
    app: Celery,
    *,
    key_type: str = "uuid",
    signing_key: Key | None = None,
    ttl: float = _DEFAULT_TTL,
    tenant_free: Iterable[str] = (),
) -> None:
    """Carry the tenant with every task of ``app``, through Celery's signals: for tasks of any base class.

    Sets the app's pgtenancy settings (``TenantTask`` reads the same). A task sent with nothing bound is
    sent without a header (Celery logs the ``NoTenantError``: a signal cannot stop the send) and the
    worker refuses it. In a process with several installed apps, a task name that more than one of them
    registers is left to ``TenantTask``.

    :param key_type: the engine's key type: a tenant id in a header must be one.
    :param signing_key: sign every header, and refuse unsigned, forged, copied or expired ones.
    :param ttl: seconds a signature lasts, added to a task's countdown or ETA.
    :param tenant_free: names of tasks that may run with no tenant (Celery's own ``celery.*`` tasks are).
    """
    if ttl <= 0:
        raise ConfigurationError("the signature ttl must be a positive number of seconds")
    if isinstance(tenant_free, str):
        raise ConfigurationError("tenant_free is a list of task names: tenant_free=[name]")
    app.conf.update({KEY_TYPE: validate_key_type(key_type), SIGNING_KEY: signing_key, SIGNATURE_TTL: ttl})
    _installed[app] = frozenset(tenant_free)
    if app.finalized:
        _guard_all(app)
    else:
        app.on_after_finalize.connect(_guard_all, weak=False)


def _capture(app: Celery, task_id: str, start: float, *, tenant_free: bool) -> dict[str, str]:
    """The headers for a task about to be sent: the current binding, signed if ``app`` has a key."""
    if tenant_free and current_binding() is None:
        return {}
    ttl = float(app.conf.get(SIGNATURE_TTL) or _DEFAULT_TTL)
    return capture(signing_key=app.conf.get(SIGNING_KEY), job_id=task_id, ttl=ttl + max(start, 0.0))


def _start_of(countdown: object, eta: object) -> float:
    """Seconds from now until a task sent with ``countdown`` or ``eta`` may start (a naive ETA is UTC)."""
    if isinstance(countdown, int | float):
        return float(countdown)
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime):
        return (eta if eta.tzinfo else eta.replace(tzinfo=UTC)).timestamp() - time.time()
    return 0.0


def _is_tenant_free(app: Celery, name: str, task: object) -> bool:
    """Whether the task may run with no tenant: declared so, listed at ``install()``, or Celery's own."""
    return (
        getattr(task, "tenant_free", False) is True
        or name in _installed.get(app, ())
        or name.startswith("celery.")
    )


def _publishing_app(name: str) -> Celery | None:
    """The installed app a message for task ``name`` is sent for, if exactly one can be told."""
    apps = [app for app in _installed if name in app.tasks] or list(_installed)
    return apps[0] if len(apps) == 1 else None


def _on_publish(sender: str, headers: dict[str, Any], **_: Any) -> None:
    """``before_task_publish``: put the current binding into the message of an installed app's task."""
    app = _publishing_app(sender)
    if app is None:
        return
    task = app.tasks.get(sender)
    if BINDING in headers and (task is None or isinstance(task, TenantTask)):
        return  # captured by TenantTask.apply_async, with its own app's settings
    for name in HEADERS:  # a retry copies the previous headers: captured again here, never trusted
        headers.pop(name, None)
    free = _is_tenant_free(app, sender, task)
    headers.update(_capture(app, headers["id"], _start_of(None, headers.get("eta")), tenant_free=free))


def _binding_for(task: Task, request: Any) -> Binding:
    """The binding a traced task runs as: its headers, checked; under ``apply()``, the caller's own."""
    app, conf = task.app, task.app.conf
    free = _is_tenant_free(app, task.name, task)
    key_type = conf.get(KEY_TYPE) or "uuid"
    if request.is_eager:  # apply() runs the body here and now: as whatever its caller has bound
        headers = {} if free and current_binding() is None else capture()
        return restore(headers, key_type=key_type, tenant_free=free)
    return restore(
        request.headers,
        key_type=key_type,
        signing_key=conf.get(SIGNING_KEY),
        job_id=request.id,
        tenant_free=free,
    )


def _on_prerun(task: Task | None = None, **_: Any) -> None:
    """``task_prerun``: bind the task's tenant, or remember why it cannot run (a signal cannot raise)."""
    if task is None or not (isinstance(task, TenantTask) or task.app in _installed):
        return
    request = task.request
    try:
        binding = _binding_for(task, request)
        binding.__enter__()
    except TenancyError as error:
        _running[request] = error
    else:
        _running[request] = binding


def _on_postrun(task: Task | None = None, **_: Any) -> None:
    """``task_postrun`` (sent even when the task failed): unbind what ``task_prerun`` bound."""
    outcome = _running.pop(task.request, None) if task is not None else None
    if isinstance(outcome, Binding):
        outcome.__exit__(None, None, None)


def _admit(request: Any) -> None:
    """Raise why a traced task may not run its body; a direct call (``task(...)``) runs as its caller."""
    if request.called_directly:
        return
    outcome = _running.get(request)
    if isinstance(outcome, TenancyError):
        raise outcome
    if outcome is None:
        raise NoTenantError("the task's tenant was not restored: pgtenancy's task_prerun handler did not run")


def _guard_all(sender: Celery, **_: Any) -> None:
    """Make every task of an installed app refuse its body unless its binding was restored."""
    for task in sender.tasks.values():
        if not isinstance(task, TenantTask) and "run" not in vars(task):
            task.run = _guarded(task, task.run)


def _guarded(task: Task, run: Callable[..., Any]) -> Callable[..., Any]:
    """``run``, called only once ``_admit`` lets the task's current request through."""

    @functools.wraps(run)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _admit(task.request)
        return run(*args, **kwargs)

    return guarded


def _on_worker_init(sender: Any, **_: Any) -> None:
    """``worker_init``: guard the tasks registered after the app was finalized, before any is run."""
    if sender.app in _installed:
        _guard_all(sender.app)


signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="pgtenancy.publish")
signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="pgtenancy.prerun")
signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="pgtenancy.postrun")
signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="pgtenancy.worker_init")
