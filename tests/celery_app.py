"""The Celery app the job tests run a real worker for: the docs' example app and tasks that report.

``celery -A tests.celery_app worker`` with ``examples/`` on the path and the example's environment
(``DATABASE_URL``, ``ADMIN_DATABASE_URL``, ``REDIS_URL``, ``JOB_SIGNING_KEY``). Every task says what it
saw: the tenant bound while it ran and the tenants of the notes it could read. The tasks that write mark
in Redis that their body ran, so a refused task can be shown never to have started.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Task
from celery_worker import app, engine  # type: ignore[import-not-found]
from sqlalchemy import text

from pgtenancy import current_tenant_id
from pgtenancy.jobs.celery import TenantTask, tenant_task

__all__ = ["app", "marks"]

marks = redis.Redis.from_url(os.environ["REDIS_URL"])
Seen = dict[str, Any]


def seen() -> Seen:
    """The tenant bound now and the tenants (and number) of the notes it can read."""
    with engine.connect() as conn:
        tenants = conn.execute(text("SELECT tenant_id FROM notes")).scalars().all()
    bound = current_tenant_id()
    return {"bound": None if bound is None else str(bound), "tenants": sorted({str(t) for t in tenants}),
            "count": len(tenants)}  # fmt: skip


def write(task: Task, body: str) -> Seen:
    """Mark that the body ran, then add a note as the bound tenant."""
    marks.set("ran:" + task.request.id, body)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
    return seen()


@tenant_task
def read_notes() -> Seen:
    return seen()


@app.task
def read_notes_plain() -> Seen:
    return seen()


@tenant_task(bind=True)
def write_note(self: Task, body: str) -> Seen:
    return write(self, body)


@app.task(bind=True)
def write_note_plain(self: Task, body: str) -> Seen:
    return write(self, body)


@tenant_task
def read_after(previous: list[Seen] | Seen | None = None) -> list[Seen]:
    earlier = previous if isinstance(previous, list) else [previous] if previous else []
    return [*earlier, seen()]


@app.task
def read_after_plain(previous: list[Seen]) -> list[Seen]:
    return [*previous, seen()]


@tenant_task
def collect(results: list[Seen]) -> dict[str, Any]:
    return {"header": results, "body": seen()}


@tenant_task(bind=True, max_retries=2)
def retry_then_read(self: Task) -> Seen:
    if self.request.retries == 0:
        raise self.retry(countdown=0.5)
    return {**seen(), "retries": self.request.retries}


@app.task(bind=True, max_retries=2)
def retry_then_read_plain(self: Task) -> Seen:
    if self.request.retries == 0:
        raise self.retry(countdown=0.5)
    return {**seen(), "retries": self.request.retries}


@tenant_task
def send_child() -> str:
    """A task that sends another: the child carries the tenant this one runs for."""
    return str(read_notes_plain.delay().id)


@app.task(base=TenantTask, tenant_free=True)
def tenant_free_read() -> Seen:
    return seen()


@tenant_task
def fail(message: str) -> None:
    raise ValueError(message)
