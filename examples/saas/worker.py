"""The background worker: jobs queued by a request run as the requesting tenant, and as no other.

The queue is an in-process ``asyncio.Queue``; the tenant travels as it would over a broker (Celery, arq,
a table): ``capture()`` signs the request's tenant into the job's headers for that job's id, and the worker
checks and binds them with ``restore()`` before the job runs. Headers and arguments are untrusted input on
the worker: a job whose headers are missing, forged, copied or expired is refused before it runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from pgtenancy import TenancyError, current_tenant_id
from pgtenancy.config import TenantId
from pgtenancy.jobs import capture, restore
from saas.models import Task

__all__ = ["JOBS", "Job", "Outcome", "Worker"]

_log = logging.getLogger(__name__)


async def complete_project(engine: AsyncEngine, arguments: Mapping[str, Any]) -> int:
    """Mark every task of a project done; returns how many rows changed (only the bound tenant's)."""
    project_id = arguments.get("project_id")
    if not isinstance(project_id, int) or isinstance(project_id, bool):
        raise ValueError("complete_project needs an integer project_id")
    async with engine.begin() as conn:  # no tenant filter: RLS limits the update to the job's tenant
        result = await conn.execute(update(Task).where(Task.project_id == project_id).values(done=True))
    return result.rowcount


JOBS: dict[str, Callable[[AsyncEngine, Mapping[str, Any]], Awaitable[object]]] = {
    "complete_project": complete_project
}


@dataclass(frozen=True)
class Job:
    """A queued job: its id, its name, its arguments and the headers that carry its tenant."""

    id: str
    name: str
    arguments: dict[str, Any]
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    """What a job did: the tenant it ran for and its result or error, or why it was refused before running."""

    job: Job
    tenant: TenantId | None = None
    result: object = None
    error: str | None = None
    refused: str | None = None


class Worker:
    """Runs queued jobs, each inside the tenant binding its checked headers carry."""

    def __init__(self, engine: AsyncEngine, *, signing_key: str) -> None:
        self.engine = engine  # instrumented, as the app role
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.outcomes: list[Outcome] = []
        self._key = signing_key

    def enqueue(self, name: str, **arguments: Any) -> Job:
        """Queue job ``name`` for the tenant bound now (``NoTenantError`` outside a tenant context)."""
        if name not in JOBS:
            raise ValueError(f"unknown job {name!r}")
        job_id = uuid.uuid4().hex
        job = Job(job_id, name, arguments, capture(signing_key=self._key, job_id=job_id))
        self.queue.put_nowait(job)
        return job

    async def run(self) -> None:
        """Process jobs as they arrive, until cancelled (started by the app's lifespan)."""
        while True:
            job = await self.queue.get()
            self.outcomes.append(await self.process(job))

    async def drain(self) -> list[Outcome]:
        """Process every job queued so far (tests, and a shutdown that lets the queue empty)."""
        done = []
        while not self.queue.empty():
            done.append(await self.process(self.queue.get_nowait()))
        self.outcomes.extend(done)
        return done

    async def process(self, job: Job) -> Outcome:
        """Check the job's headers, bind its tenant and run it; a refused job never runs."""
        try:
            binding = restore(job.headers, key_type="uuid", signing_key=self._key, job_id=job.id)
        except TenancyError as refused:
            return Outcome(job, refused=str(refused))
        async with binding:
            tenant = current_tenant_id()
            try:
                return Outcome(job, tenant, await JOBS[job.name](self.engine, job.arguments))
            except Exception as error:  # one failing job must not stop the worker
                _log.exception("job %s (%s) failed", job.id, job.name)
                return Outcome(job, tenant, error=type(error).__name__)
