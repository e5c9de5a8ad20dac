"""arq: a job runs as the tenant it was enqueued under, or not at all.

Proven with a real arq worker polling a real Redis and reading the real database through an
instrumented asyncpg engine as the NOSUPERUSER NOBYPASSRLS app role. The worker runs in this process
(started with nothing bound), and the docs' examples run in a worker subprocess started by arq's CLI.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "arq", reason="arq cannot share the dev environment (it pins redis<6, Celery needs >=6.1): nox -s arq"
)

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from arq.worker import Worker
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pgtenancy import (
    ConfigurationError,
    InvalidTenantError,
    JobHeaderError,
    NoTenantError,
    current_tenant_id,
    tenant_context,
    without_tenant,
)
from pgtenancy.context import NO_TENANT, current_binding
from pgtenancy.jobs import capture, detached, for_each_tenant_async
from pgtenancy.jobs.arq import enqueue_job, tenant_job
from pgtenancy.jobs.carrier import BINDING, EXPIRES
from pgtenancy.testing import TestDatabase
from pgtenancy.testing.database import Role
from pgtenancy.testing.plugin import EngineFactory
from tests.conftest import TENANTS
from tests.redis_server import redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
KEY = b"a key the enqueuers and the workers share"
A, B = TENANTS[0], TENANTS[1]
MORE_TENANTS = [uuid.UUID(int=0xF000 + n) for n in range(45)]  # with TENANTS, the 50 of the fan-out

BODIES: list[str] = []  # the id of every job whose body ran


async def tenants_seen(engine: AsyncEngine) -> list[uuid.UUID]:
    """The tenant of every note the current binding can read."""
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT tenant_id FROM notes"))).scalars())


@tenant_job
async def read_notes(ctx: dict[str, Any]) -> tuple[object, list[uuid.UUID]]:
    """The tenant the job is bound to, and the tenant of every note it can read."""
    BODIES.append(ctx["job_id"])
    return current_tenant_id(), await tenants_seen(ctx["engine"])


@tenant_job(signing_key=KEY)
async def write_note(ctx: dict[str, Any], body: str) -> uuid.UUID:
    """Insert a note with the database's default tenant (the bound one); its tenant_id."""
    BODIES.append(ctx["job_id"])
    async with ctx["engine"].begin() as conn:
        insert = text("INSERT INTO notes (body) VALUES (:body) RETURNING tenant_id")
        tenant: uuid.UUID = (await conn.execute(insert, {"body": body})).scalar_one()
        return tenant


@tenant_job
async def spawn(ctx: dict[str, Any]) -> dict[str, tuple[object, object]]:
    """What a task started inside the job sees, and a task started detached."""

    async def look() -> tuple[object, object]:
        try:
            return current_binding(), await tenants_seen(ctx["engine"])
        except NoTenantError:
            return current_binding(), "NoTenantError"

    inherited = asyncio.create_task(look())
    with detached():
        started = asyncio.create_task(look())
    return {"inherited": await inherited, "detached": await started}


@tenant_job
async def relay(ctx: dict[str, Any]) -> str:
    """Enqueue a follow-up job from inside this one; its id."""
    job = await enqueue_job(ctx["redis"], "read_notes")
    assert job is not None
    return job.job_id


@tenant_job(tenant_free=True)
async def housekeeping(ctx: dict[str, Any]) -> tuple[bool, list[uuid.UUID]]:
    """A job declared tenant-free: bound to no tenant, it reads nothing."""
    BODIES.append(ctx["job_id"])
    return current_binding() is NO_TENANT, await tenants_seen(ctx["engine"])


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:  # noqa: F811
    """An arq pool on an emptied Redis: no job of another test is left to run."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    yield pool
    await pool.aclose()


@pytest.fixture
def engine(seeded: TestDatabase, pgtenancy_engine_factory: EngineFactory) -> AsyncEngine:
    """``create_async_engine`` on the app role's asyncpg URL, instrumented with ``key_type="uuid"``."""
    engine: AsyncEngine = pgtenancy_engine_factory("asyncpg", key_type="uuid")
    return engine


@pytest.fixture(scope="module")
def admin(seeded: TestDatabase) -> Iterator[Engine]:
    """The superuser, who sees every row: to check what the jobs wrote."""
    engine = create_engine(seeded.url("admin"))
    yield engine
    engine.dispose()


def all_notes(admin: Engine) -> list[tuple[object, ...]]:
    with admin.connect() as conn:
        return [tuple(row) for row in conn.execute(text("SELECT id, tenant_id, body FROM notes ORDER BY id"))]


def counts(admin: Engine) -> dict[uuid.UUID, int]:
    with admin.connect() as conn:
        rows = conn.execute(text("SELECT tenant_id, count(*) FROM notes GROUP BY tenant_id"))
        return {tenant: count for tenant, count in rows}


async def work(pool: ArqRedis, engine: AsyncEngine) -> None:
    """Run a real arq worker over the queue until it is empty (burst mode), started with nothing bound."""
    assert current_binding() is None  # a job's tenant can come from its header only
    worker = Worker(
        functions=[read_notes, write_note, spawn, relay, housekeeping],
        redis_pool=pool,
        burst=True,
        poll_delay=0.01,
        handle_signals=False,
        ctx={"engine": engine},
    )
    await worker.main()


async def outcome(job: Job | None) -> Any:
    """The job's result, or the exception it failed with."""
    assert job is not None
    try:
        return await job.result(timeout=10)
    except Exception as exc:
        return exc


async def test_the_worker_reads_as_the_nosuperuser_nobypassrls_app_role(engine: AsyncEngine) -> None:
    async with without_tenant(), engine.connect() as conn:
        query = text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert tuple((await conn.execute(query)).one()) == (False, False)


async def test_a_job_reads_only_its_tenants_rows_and_writes_its_tenants_rows(
    pool: ArqRedis, engine: AsyncEngine, admin: Engine
) -> None:
    before = counts(admin)
    async with tenant_context(A):
        read_a = await enqueue_job(pool, "read_notes")
    async with tenant_context(B):
        read_b = await enqueue_job(pool, "read_notes")
    await work(pool, engine)
    assert await outcome(read_a) == (str(A), [A] * before[A])
    assert await outcome(read_b) == (str(B), [B] * before[B])

    async with tenant_context(A):
        write = await enqueue_job(pool, "write_note", "written by a job", _signing_key=KEY)
    await work(pool, engine)
    assert await outcome(write) == A
    assert counts(admin) == {**before, A: before[A] + 1}
    assert all_notes(admin)[-1][1:] == (A, "written by a job")


def signed(tenant: uuid.UUID, job_id: str, ttl: float = 60.0) -> dict[str, str]:
    with tenant_context(tenant):
        return capture(signing_key=KEY, job_id=job_id, ttl=ttl)


@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        (None, NoTenantError, "no tenant header"),
        (lambda job_id: {**signed(A, job_id), BINDING: "tenant:" + str(B)}, JobHeaderError, "bad signature"),
        (lambda job_id: signed(A, "another-job"), JobHeaderError, "another job"),
        (lambda job_id: signed(A, job_id, ttl=-1), JobHeaderError, "expired"),
        (lambda job_id: {BINDING: "tenant:" + str(A)}, JobHeaderError, "not signed"),
        (lambda job_id: "tenant:" + str(A), JobHeaderError, "not a mapping"),
    ],
    ids=["missing", "forged", "replayed", "expired", "unsigned", "not-a-mapping"],
)
async def test_a_job_with_a_bad_header_never_runs_its_body_and_changes_nothing(
    pool: ArqRedis, engine: AsyncEngine, admin: Engine, headers: Any, error: type[Exception], message: str
) -> None:
    before = all_notes(admin)
    job_id = uuid.uuid4().hex
    extra = {} if headers is None else {"pgtenancy_headers": headers(job_id)}
    job = await pool.enqueue_job("write_note", "must not be written", _job_id=job_id, **extra)
    await work(pool, engine)
    failure = await outcome(job)
    assert isinstance(failure, error) and message in str(failure)
    assert job_id not in BODIES
    assert all_notes(admin) == before


@pytest.mark.parametrize(
    ("binding", "error"),
    [("tenant", JobHeaderError), ("tenant:1; DROP TABLE notes", InvalidTenantError)],
    ids=["malformed", "not-a-uuid"],
)
async def test_a_malformed_header_or_a_tenant_id_not_of_the_key_type_never_runs_the_body(
    pool: ArqRedis, engine: AsyncEngine, binding: str, error: type[Exception]
) -> None:
    job = await pool.enqueue_job("read_notes", pgtenancy_headers={BINDING: binding})
    await work(pool, engine)
    assert isinstance(await outcome(job), error)
    assert job is not None and job.job_id not in BODIES


async def test_for_each_tenant_async_over_50_tenants_each_job_sees_its_own_rows_only(
    pool: ArqRedis, engine: AsyncEngine, admin: Engine
) -> None:
    with admin.begin() as conn:
        insert = text("INSERT INTO notes (tenant_id, body) SELECT :t, 'fan-out' FROM generate_series(1, :n)")
        for n, tenant in enumerate(MORE_TENANTS):
            conn.execute(insert, {"t": tenant, "n": 1 + n % 4})
    expected = counts(admin)
    tenants = [*TENANTS, *MORE_TENANTS]
    assert len(expected) == len(tenants) == 50

    jobs = await for_each_tenant_async(tenants, lambda tenant: enqueue_job(pool, "read_notes"))
    assert len(jobs) == 50
    await work(pool, engine)
    for tenant, job in zip(tenants, jobs, strict=True):
        assert await outcome(job) == (str(tenant), [tenant] * expected[tenant])


async def test_a_task_started_inside_a_job_inherits_its_tenant_and_a_detached_one_none(
    pool: ArqRedis, engine: AsyncEngine, admin: Engine
) -> None:
    async with tenant_context(A):
        job = await enqueue_job(pool, "spawn")
    await work(pool, engine)
    assert await outcome(job) == {
        "inherited": (str(A), [A] * counts(admin)[A]),
        "detached": (None, "NoTenantError"),
    }


async def test_a_job_enqueued_by_a_job_runs_as_the_first_jobs_tenant(
    pool: ArqRedis, engine: AsyncEngine, admin: Engine
) -> None:
    async with tenant_context(B):
        job = await enqueue_job(pool, "relay")
    await work(pool, engine)
    follow_up = Job(await outcome(job), pool)
    assert await outcome(follow_up) == (str(B), [B] * counts(admin)[B])


async def test_a_tenant_free_job_without_header_runs_bound_to_no_tenant(
    pool: ArqRedis, engine: AsyncEngine
) -> None:
    job = await pool.enqueue_job("housekeeping")  # as arq's cron enqueues it: no header
    await work(pool, engine)
    assert await outcome(job) == (True, [])


async def test_enqueueing_with_nothing_bound_fails_at_the_enqueue(pool: ArqRedis) -> None:
    with pytest.raises(NoTenantError, match="enqueue"):
        await enqueue_job(pool, "read_notes")
    with tenant_context(A), pytest.raises(ConfigurationError, match="reserved"):
        await enqueue_job(pool, "read_notes", pgtenancy_headers={BINDING: "tenant:" + str(B)})
    assert await pool.zcard("arq:queue") == 0


@pytest.mark.parametrize(
    ("options", "lifetime"),
    [({}, 86400), ({"_defer_by": timedelta(days=2)}, 3 * 86400), ({"_expires": 60}, 60)],
    ids=["default", "deferred", "expires"],
)
async def test_a_signature_lasts_as_long_as_arq_would_start_the_job(
    pool: ArqRedis, options: dict[str, Any], lifetime: int
) -> None:
    async with tenant_context(A):
        job = await enqueue_job(pool, "write_note", "later", _signing_key=KEY, **options)
    assert job is not None
    info = await job.info()
    assert info is not None
    expires = int(info.kwargs["pgtenancy_headers"][EXPIRES])
    assert abs(expires - (time.time() + lifetime)) < 5


async def test_the_wrapper_keeps_the_name_arq_registers_and_refuses_a_plain_function() -> None:
    assert Worker(functions=[read_notes], redis_pool=None, queue_name="q").functions.keys() == {"read_notes"}
    with pytest.raises(ConfigurationError, match="coroutine"):
        tenant_job(lambda ctx: None)  # type: ignore[type-var]


def docs_samples() -> list[str]:
    jobs = (ROOT / "docs" / "jobs.md").read_text()
    section = jobs[jobs.index("## arq") :]
    section = section[: m.start()] if (m := re.search(r"^## (?!arq)", section, re.M)) else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_python_sample_of_the_docs_arq_section_is_an_example_file() -> None:
    samples = docs_samples()
    assert len(samples) == 2
    for sample in samples:
        first, _, body = sample.partition("\n")
        match = re.fullmatch(r"# (examples/[\w/]+\.py)", first)
        assert match, f"a sample must start with '# examples/<file>.py': {first!r}"
        assert (ROOT / match.group(1)).read_text() == body


async def test_the_docs_examples_run_in_an_arq_worker_process(
    pool: ArqRedis,
    seeded: TestDatabase,
    admin: Engine,
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def url(role: Role) -> str:
        return seeded.url(role, drivername="postgresql+asyncpg").render_as_string(hide_password=False)

    environment = {
        "DATABASE_URL": url("app"),
        "ADMIN_DATABASE_URL": url("admin"),
        "REDIS_URL": redis_url,
        "JOB_SIGNING_KEY": "a secret the enqueuer and the worker share",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import arq_enqueue  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "examples"))
    before = counts(admin)

    added = asyncio.create_task(arq_enqueue.add_note(pool, str(A), "from the docs"))
    await pool.enqueue_job("add_note_everywhere")  # what arq's cron does at 03:00
    while await pool.zcard("arq:queue") < 2:
        await asyncio.sleep(0.01)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "arq", "arq_worker.WorkerSettings", "--burst",
        cwd=ROOT / "examples", env={**os.environ, "PYTHONPATH": str(ROOT / "examples")},
    )  # fmt: skip
    assert await asyncio.wait_for(worker.wait(), 60) == 0

    assert await added in (before[A] + 1, before[A] + 2)  # the daily note may be written first
    after = counts(admin)
    assert after == {tenant: count + 1 + (tenant == A) for tenant, count in before.items()}
    with admin.connect() as conn:
        daily = conn.execute(text("SELECT tenant_id FROM notes WHERE body = 'daily'")).scalars().all()
    assert sorted(daily) == sorted(before)
