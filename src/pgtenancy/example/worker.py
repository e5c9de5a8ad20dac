"""The example app's background worker: a per-tenant job and a nightly fan-out over every tenant.

The queue here is an ``asyncio.Queue`` so that the demo needs no broker; the tenant travels the way it
does over Celery or arq: ``capture()`` puts the enqueuing request's tenant into the job's headers,
signed for that job, and the worker binds it again with ``restore()`` before the job runs. The jobs
themselves, like the app's handlers, never filter by tenant: row-level security does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from pgtenancy import TenancyError, current_tenant_id
from pgtenancy.config import TenantId
from pgtenancy.example.models import KEY_TYPE, Project
from pgtenancy.jobs import capture, for_each_tenant_async, restore

__all__ = ["Job", "Outcome", "Worker"]


@dataclass(frozen=True)
class Job:
    """A queued job: its id, its name and the headers that carry its tenant."""

    id: str
    name: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    """What a job did: the tenant it ran for and its result, or why it was refused before running."""

    job: Job
    tenant: TenantId | None = None
    result: object = None
    refused: str | None = None


class Worker:
    """Runs the example's jobs from a queue, each bound to the tenant its headers carry."""

    def __init__(self, engine: AsyncEngine, *, signing_key: bytes) -> None:
        self.engine = engine  # instrumented, connected as the app role
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self._key = signing_key

    def enqueue(self, name: str) -> Job:
        """Queue job ``name`` for the tenant bound now (``NoTenantError`` outside a tenant context)."""
        job_id = uuid.uuid4().hex
        job = Job(job_id, name, capture(signing_key=self._key, job_id=job_id))
        self.queue.put_nowait(job)
        return job

    async def nightly(self, tenants: Iterable[int]) -> list[Job]:
        """The periodic fan-out: one ``count_projects`` job per tenant (the list read by an admin tool)."""

        async def one(tenant: TenantId) -> Job:
            return self.enqueue("count_projects")

        return await for_each_tenant_async(tenants, one)

    async def drain(self) -> list[Outcome]:
        """Run every queued job, each inside the binding its checked headers carry."""
        done = []
        while not self.queue.empty():
            job = self.queue.get_nowait()
            try:
                binding = restore(job.headers, key_type=KEY_TYPE, signing_key=self._key, job_id=job.id)
            except TenancyError as refused:
                done.append(Outcome(job, refused=str(refused)))
                continue
            async with binding:
                done.append(Outcome(job, current_tenant_id(), await self._run(job.name)))
        return done

    async def _run(self, name: str) -> object:
        if name != "count_projects":
            raise ValueError(f"unknown job {name!r}")
        async with self.engine.connect() as conn:  # no tenant filter: RLS counts this tenant's projects
            return (await conn.execute(select(func.count()).select_from(Project))).scalar_one()
