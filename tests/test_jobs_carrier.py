"""The job carrier: the binding captured into headers on enqueue, checked and bound again on the worker.

Proven against the real database: a restored job reads its own tenant's rows and no other's, and a
header that is missing, malformed, forged, copied onto another job or expired never lets a body run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, text

from pgtenancy import (
    InvalidTenantError,
    JobHeaderError,
    NoTenantError,
    current_tenant_id,
    tenant_context,
    without_tenant,
)
from pgtenancy.context import NO_TENANT, current_binding
from pgtenancy.jobs import capture, detached, for_each_tenant, for_each_tenant_async, restore, run_in_executor
from pgtenancy.jobs.carrier import BINDING, EXPIRES, JOB, SIGNATURE
from pgtenancy.testing import TestDatabase
from tests.conftest import ROWS_PER_TENANT, TENANTS

KEY = b"a key the enqueuer and the workers share"
A, B = TENANTS[0], TENANTS[1]


@pytest.fixture
def engine(seeded: TestDatabase, pgtenancy_engine_factory) -> Iterator[Engine]:
    yield pgtenancy_engine_factory("psycopg", key_type="uuid")


def tenants_seen(engine: Engine) -> list[uuid.UUID]:
    """The tenant of every note the current binding can read, through the instrumented engine."""
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT tenant_id FROM notes")).scalars())


def run_job(engine: Engine, headers: dict[str, str], **options: object) -> list[uuid.UUID]:
    """What a worker does: restore the headers, then run the body (a read of notes)."""
    with restore(headers, **options):  # type: ignore[arg-type]
        return tenants_seen(engine)


def test_a_restored_job_reads_its_own_tenants_rows_only(engine: Engine) -> None:
    with tenant_context(A):
        headers = capture()
    assert headers == {BINDING: "tenant:" + str(A)}
    seen = run_job(engine, headers)
    assert seen == [A] * ROWS_PER_TENANT[A]
    assert current_binding() is None  # nothing leaks out of the job


def test_a_job_enqueued_without_tenant_runs_without_tenant(engine: Engine) -> None:
    with without_tenant():
        headers = capture()
    with restore(headers):
        assert current_binding() is NO_TENANT
        assert tenants_seen(engine) == []


def test_enqueueing_with_nothing_bound_fails_where_it_happens() -> None:
    with pytest.raises(NoTenantError, match="enqueue"):
        capture()


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, NoTenantError),
        (None, NoTenantError),
        ({BINDING: "tenant"}, JobHeaderError),
        ({BINDING: 42}, JobHeaderError),
        ({BINDING: "tenant:not-a-uuid"}, InvalidTenantError),
        ({BINDING: "tenant:" + str(A) + "'; DROP TABLE notes; --"}, InvalidTenantError),
    ],
    ids=["empty", "none", "malformed", "not-text", "not-a-uuid", "injection"],
)
def test_a_bad_header_never_lets_the_body_run(headers: object, error: type[Exception]) -> None:
    ran = []
    with pytest.raises(error), restore(headers):  # type: ignore[arg-type]
        ran.append(True)
    assert ran == []


def test_a_tenant_free_job_without_header_runs_without_tenant(engine: Engine) -> None:
    with restore({}, tenant_free=True):
        assert current_binding() is NO_TENANT
        assert tenants_seen(engine) == []


def test_a_signed_header_binds_the_job_it_was_signed_for(engine: Engine) -> None:
    with tenant_context(A):
        headers = capture(signing_key=KEY, job_id="job-1")
    assert set(headers) == {BINDING, JOB, EXPIRES, SIGNATURE}
    assert run_job(engine, headers, signing_key=KEY, job_id="job-1") == [A] * ROWS_PER_TENANT[A]


def signed(tenant: uuid.UUID, job_id: str = "job-1", ttl: float = 60.0) -> dict[str, str]:
    with tenant_context(tenant):
        return capture(signing_key=KEY, job_id=job_id, ttl=ttl)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h: {**h, BINDING: "tenant:" + str(B)}, "bad signature"),  # another tenant, same signature
        (lambda h: {**h, SIGNATURE: "0" * 64}, "bad signature"),
        (lambda h: {k: v for k, v in h.items() if k != SIGNATURE}, "not signed"),
        (lambda h: {BINDING: h[BINDING]}, "not signed"),
        (lambda h: {**h, EXPIRES: str(int(time.time()) + 3600)}, "bad signature"),  # extended by hand
        (lambda h: signed(A, job_id="job-2"), "another job"),  # a valid header copied onto job-1
        (lambda h: signed(A, ttl=-1), "expired"),
    ],
    ids=["other-tenant", "forged", "signature-dropped", "unsigned", "expiry-moved", "replayed", "expired"],
)
def test_a_forged_replayed_or_expired_header_never_runs_the_body(tamper, message: str) -> None:
    headers = tamper(signed(A))
    ran = []
    with pytest.raises(JobHeaderError, match=message), restore(headers, signing_key=KEY, job_id="job-1"):
        ran.append(True)
    assert ran == []


def test_a_header_signed_with_another_key_is_refused() -> None:
    with pytest.raises(JobHeaderError, match="bad signature"):
        restore(signed(A), signing_key=b"another key", job_id="job-1")


def test_for_each_tenant_enqueues_one_job_per_tenant_each_seeing_only_its_own(engine: Engine) -> None:
    queue = for_each_tenant([*TENANTS, TENANTS[0]], lambda tenant: (tenant, capture()))
    assert [tenant for tenant, _ in queue] == TENANTS  # one job per distinct tenant
    for tenant, headers in queue:
        assert run_job(engine, headers) == [tenant] * ROWS_PER_TENANT[tenant]
    assert current_binding() is None


async def test_for_each_tenant_async_binds_each_tenant_while_it_enqueues() -> None:
    async def enqueue(tenant: uuid.UUID) -> tuple[uuid.UUID, object]:
        await asyncio.sleep(0)
        return tenant, current_tenant_id()

    done = await for_each_tenant_async(TENANTS, enqueue)
    assert done == [(tenant, tenant) for tenant in TENANTS]


async def test_run_in_executor_carries_the_tenant_and_the_loops_own_does_not() -> None:
    with ThreadPoolExecutor(max_workers=1) as executor:
        async with tenant_context(A):
            plain = await asyncio.get_running_loop().run_in_executor(executor, current_tenant_id)
            carried = await run_in_executor(executor, current_tenant_id)
    assert plain is None  # asyncio does not copy the context into the thread
    assert carried == A


async def test_a_task_started_detached_inside_a_request_inherits_no_tenant() -> None:
    seen: dict[str, object] = {}

    async def consumer(name: str) -> None:
        seen[name] = current_binding()

    async with tenant_context(A):
        inherited = asyncio.create_task(consumer("inherited"))
        with detached():
            started = asyncio.create_task(consumer("detached"))
        assert current_tenant_id() == A  # the request's own binding is back
    await asyncio.gather(inherited, started)
    assert seen == {"inherited": A, "detached": None}
