"""A Celery app whose tasks run as the tenant they were sent for: ``celery -A celery_worker worker``."""

import os

from celery import Celery
from celery.schedules import crontab
from sqlalchemy import create_engine, text

from pgtenancy import instrument
from pgtenancy.jobs import for_each_tenant
from pgtenancy.jobs.celery import install, tenant_task

app = Celery("celery_worker", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
install(app, key_type="uuid", signing_key=os.environ["JOB_SIGNING_KEY"])  # the same key where tasks are sent
app.conf.beat_schedule = {"daily": {"task": "celery_worker.add_note_everywhere", "schedule": crontab(3, 0)}}

engine = instrument(create_engine(os.environ["DATABASE_URL"]), key_type="uuid")
admin = create_engine(os.environ["ADMIN_DATABASE_URL"])  # sees every tenant: only lists them


@tenant_task
def add_note(body: str) -> int:
    """Runs as the sending tenant: the new row is that tenant's, the count covers its rows only."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        return conn.scalar(text("SELECT count(*) FROM notes"))


@tenant_task(tenant_free=True)
def add_note_everywhere() -> None:
    """Sent by beat with no tenant: sends one add_note per tenant, each bound to that tenant alone."""
    with admin.connect() as conn:
        tenants = conn.execute(text("SELECT DISTINCT tenant_id FROM notes")).scalars().all()
    for_each_tenant(tenants, lambda tenant: add_note.delay("daily"))


@app.task
def count_notes() -> int:
    """A task with Celery's own base class: install() carries the tenant for it too."""
    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM notes"))
