"""An arq worker whose jobs run as the tenant they were enqueued for: ``arq arq_worker.WorkerSettings``."""

import os

from arq import cron
from arq.connections import RedisSettings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from pgtenancy import instrument
from pgtenancy.jobs import for_each_tenant_async
from pgtenancy.jobs.arq import enqueue_job, tenant_job

SIGNING_KEY = os.environ["JOB_SIGNING_KEY"]  # the same secret where jobs are enqueued
engine = instrument(create_async_engine(os.environ["DATABASE_URL"]), key_type="uuid")
admin = create_async_engine(os.environ["ADMIN_DATABASE_URL"])  # sees every tenant: only lists them


@tenant_job(signing_key=SIGNING_KEY)
async def add_note(ctx, body: str) -> int:
    """Runs as the enqueuing tenant: the new row is that tenant's, the count covers its rows only."""
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        return await conn.scalar(text("SELECT count(*) FROM notes"))


@tenant_job(tenant_free=True)
async def add_note_everywhere(ctx) -> None:
    """A cron job, enqueued by arq with no tenant: one signed job per tenant, each bound to that tenant."""
    async with admin.connect() as conn:
        tenants = (await conn.execute(text("SELECT DISTINCT tenant_id FROM notes"))).scalars().all()
    await for_each_tenant_async(
        tenants, lambda tenant: enqueue_job(ctx["redis"], "add_note", "daily", _signing_key=SIGNING_KEY)
    )


class WorkerSettings:
    functions = (add_note, add_note_everywhere)
    cron_jobs = (cron(add_note_everywhere, hour=3, minute=0),)
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
