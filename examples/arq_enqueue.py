"""Enqueue an arq job as the current tenant: the worker runs it as that tenant, or refuses it."""

import os

from arq.connections import ArqRedis

from pgtenancy import tenant_context
from pgtenancy.jobs.arq import enqueue_job

SIGNING_KEY = os.environ["JOB_SIGNING_KEY"]


async def add_note(pool: ArqRedis, tenant_id: str, body: str) -> int:
    """Enqueue ``add_note`` for ``tenant_id`` and wait for its result (the tenant's count of notes)."""
    async with tenant_context(tenant_id):  # in a request, pgtenancy's middleware has bound it already
        job = await enqueue_job(pool, "add_note", body, _signing_key=SIGNING_KEY)
    return await job.result(timeout=30)
