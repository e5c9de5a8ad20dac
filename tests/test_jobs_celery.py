"""pgtenancy.jobs.celery: a task runs as the tenant it was sent under; one that cannot say so never runs.

Against a real Celery worker (a subprocess, thread pool), a real Redis as broker and result backend, and
the real PostgreSQL as the NOSUPERUSER NOBYPASSRLS app role. The worker's app is the docs' example app
(``install()``ed, signing key set) with the reporting tasks of ``tests/celery_app.py``; each case runs for
a ``TenantTask`` task and for a task with Celery's own base class. A few unit tests use eager mode.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.result import AsyncResult
from sqlalchemy import Engine, create_engine, text

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
from pgtenancy.jobs import capture, for_each_tenant
from pgtenancy.jobs.carrier import BINDING, EXPIRES
from pgtenancy.jobs.celery import TenantTask, install, tenant_task
from pgtenancy.testing import TestDatabase
from tests.conftest import TENANTS
from tests.redis_server import redis_url, stop  # noqa: F401 - redis_url is a fixture

ROOT = Path(__file__).resolve().parents[1]
KEY = "a secret the senders and the worker share"
A, B = TENANTS[0], TENANTS[1]
FANOUT = [uuid.UUID(int=0xF000 + n) for n in range(50)]
TIMEOUT = 30


# -- the real worker ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admin(seeded: TestDatabase) -> Iterator[Engine]:
    engine = create_engine(seeded.url("admin"))
    with engine.begin() as conn:  # 50 more tenants, 1 to 3 notes each, for the fan-out
        for n, tenant in enumerate(FANOUT):
            conn.execute(
                text(
                    "INSERT INTO notes (tenant_id, body) SELECT :t, 'fan ' || g FROM generate_series(1, :n) g"
                ),
                {"t": tenant, "n": 1 + n % 3},
            )
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def environment(seeded: TestDatabase, redis_url: str) -> Iterator[dict[str, str]]:  # noqa: F811
    """The example app's environment, set in this process too (the tests send through the same app)."""
    values = {
        "DATABASE_URL": seeded.url("app").render_as_string(hide_password=False),
        "ADMIN_DATABASE_URL": seeded.url("admin").render_as_string(hide_password=False),
        "REDIS_URL": redis_url,
        "JOB_SIGNING_KEY": KEY,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield values


@pytest.fixture(scope="module")
def tasks(environment: dict[str, str]) -> ModuleType:
    """``tests.celery_app``, imported with ``examples/`` on the path as the worker imports it."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        return importlib.import_module("tests.celery_app")
    finally:
        sys.path.remove(str(ROOT / "examples"))


@pytest.fixture(scope="module")
def worker(
    tasks: ModuleType, environment: dict[str, str], admin: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleType]:
    """One ``celery worker`` process for the module, stopped with a warm shutdown (SIGTERM) after it."""
    log = tmp_path_factory.mktemp("celery") / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "--pool=threads",
               "--concurrency=2", "--loglevel=warning", "--without-heartbeat", "--without-gossip",
               "--without-mingle"]  # fmt: skip
    env = {**os.environ, **environment, "PYTHONPATH": str(ROOT / "examples")}
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        with tenant_context(A):
            tasks.read_notes.delay().get(timeout=60)  # the worker answers: it is ready
        yield tasks
    except Exception:
        print(log.read_text())
        raise
    finally:
        stop(process, timeout=30)


def notes_of(admin: Engine, tenant: uuid.UUID) -> int:
    with admin.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM notes WHERE tenant_id = :t"), {"t": tenant})


def saw_only(admin: Engine, tenant: uuid.UUID) -> dict[str, Any]:
    """What a task running as ``tenant`` reports: that tenant bound, and all of its notes and no other's."""
    return {"bound": str(tenant), "tenants": [str(tenant)], "count": notes_of(admin, tenant)}


def test_the_worker_connects_as_a_role_that_row_level_security_binds(admin: Engine, seeded: TestDatabase):
    with admin.connect() as conn:
        role = conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": seeded.roles.app}
        ).one()
    assert tuple(role) == (False, False)


@pytest.mark.parametrize("name", ["write_note", "write_note_plain"])
def test_a_task_sent_for_a_tenant_reads_and_writes_that_tenants_rows_only(
    worker: ModuleType, admin: Engine, name: str
):
    body = f"written by {name} {uuid.uuid4()}"
    with tenant_context(B):
        result = getattr(worker, name).delay(body)
    assert result.get(timeout=TIMEOUT) == saw_only(admin, B)
    with admin.connect() as conn:
        assert conn.execute(
            text("SELECT tenant_id FROM notes WHERE body = :b"), {"b": body}
        ).scalars().all() == [B]


def test_a_chain_runs_every_step_as_the_tenant_that_sent_it(worker: ModuleType, admin: Engine):
    with tenant_context(A):
        result = chain(worker.read_after.s(), worker.read_after_plain.s(), worker.read_after.s()).delay()
    assert result.get(timeout=TIMEOUT) == [saw_only(admin, A)] * 3


def test_a_group_runs_every_member_as_the_tenant_that_sent_it(worker: ModuleType, admin: Engine):
    with tenant_context(B):
        result = group(worker.read_notes.s(), worker.read_notes_plain.s(), worker.read_notes.s()).delay()
    assert result.get(timeout=TIMEOUT) == [saw_only(admin, B)] * 3


def test_a_chord_runs_its_header_and_its_body_as_the_tenant_that_sent_it(worker: ModuleType, admin: Engine):
    with tenant_context(A):
        result = chord([worker.read_notes.s(), worker.read_notes_plain.s()])(worker.collect.s())
    assert result.get(timeout=TIMEOUT) == {"header": [saw_only(admin, A)] * 2, "body": saw_only(admin, A)}


@pytest.mark.parametrize("name", ["retry_then_read", "retry_then_read_plain"])
def test_a_retry_runs_again_as_the_same_tenant(worker: ModuleType, admin: Engine, name: str):
    with tenant_context(B):
        result = getattr(worker, name).delay()
    assert result.get(timeout=TIMEOUT) == {**saw_only(admin, B), "retries": 1}


def test_a_countdown_or_an_eta_keeps_the_tenant(worker: ModuleType, admin: Engine):
    with tenant_context(A):
        later = worker.read_notes.apply_async(countdown=0.5)
        at = worker.read_notes_plain.apply_async(eta=datetime.now(UTC) + timedelta(seconds=0.5))
    assert later.get(timeout=TIMEOUT) == at.get(timeout=TIMEOUT) == saw_only(admin, A)


def test_a_task_sent_by_a_task_carries_the_tenant_of_the_task_that_sent_it(worker: ModuleType, admin: Engine):
    with tenant_context(B):
        child = worker.send_child.delay().get(timeout=TIMEOUT)
    assert AsyncResult(child, app=worker.app).get(timeout=TIMEOUT) == saw_only(admin, B)


def test_results_and_errors_come_back_unchanged(worker: ModuleType):
    with tenant_context(A):
        failed = worker.fail.delay("the body's own error")
    with pytest.raises(ValueError, match="the body's own error"):
        failed.get(timeout=TIMEOUT)


def test_a_tenant_free_task_runs_as_no_tenant_when_sent_with_none(worker: ModuleType, admin: Engine):
    unbound = worker.tenant_free_read.delay()
    with tenant_context(A):
        bound = worker.tenant_free_read.delay()
    assert unbound.get(timeout=TIMEOUT) == {"bound": None, "tenants": [], "count": 0}
    assert bound.get(timeout=TIMEOUT) == saw_only(admin, A)


def test_for_each_tenant_sends_fifty_jobs_each_of_which_sees_its_own_tenant_only(
    worker: ModuleType, admin: Engine
):
    tasks = [worker.read_notes, worker.read_notes_plain]
    results = for_each_tenant(FANOUT, lambda tenant: tasks[FANOUT.index(tenant) % 2].delay())
    assert len(results) == 50
    assert [result.get(timeout=TIMEOUT) for result in results] == [saw_only(admin, t) for t in FANOUT]


# -- refused messages: sent the way anyone who can write to the broker can ------------------------------


def publish(app: Celery, name: str, args: list[Any], task_id: str, headers: dict[str, str]) -> AsyncResult:
    """A task message put on the queue with the kombu producer: no signal of this process adds a header."""
    message = app.amqp.create_task_message(task_id, name, args, {})
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange="",
            routing_key="celery",
            serializer="json",
            headers={**message.headers, **headers},
            **message.properties,
        )
    return AsyncResult(task_id, app=app)


def forged(task_id: str) -> dict[str, str]:
    headers = signed(task_id)
    return {**headers, BINDING: "tenant:" + str(B)}  # signed for A, re-pointed at B


def signed(task_id: str, *, key: str = KEY, ttl: float = 60.0, tenant: object = A) -> dict[str, str]:
    with tenant_context(tenant):  # type: ignore[arg-type]
        return capture(signing_key=key, job_id=task_id, ttl=ttl)


def unsigned(task_id: str) -> dict[str, str]:
    with tenant_context(A):
        return capture()


REFUSED: dict[str, tuple[Callable[[str], dict[str, str]], type[Exception], str]] = {
    "no header": (lambda job: {}, NoTenantError, "no tenant header"),
    "an unsigned header": (unsigned, JobHeaderError, "not signed"),
    "a re-pointed tenant": (forged, JobHeaderError, "bad signature"),
    "another key's signature": (
        lambda task_id: signed(task_id, key="guessed"),
        JobHeaderError,
        "bad signature",
    ),
    "a header copied from another task": (lambda _: signed(str(uuid.uuid4())), JobHeaderError, "another job"),
    "an expired header": (lambda task_id: signed(task_id, ttl=-1), JobHeaderError, "expired"),
    "a signed id that is no uuid": (
        lambda task_id: signed(task_id, tenant="acme"),
        InvalidTenantError,
        "uuid",
    ),
}


@pytest.mark.parametrize("name", ["write_note", "write_note_plain"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_task_whose_header_is_refused_never_runs_its_body_and_changes_no_data(
    worker: ModuleType, admin: Engine, name: str, case: str
):
    headers, error, message = REFUSED[case]
    task_id, body = str(uuid.uuid4()), f"must not be written: {case}"
    before = {tenant: notes_of(admin, tenant) for tenant in TENANTS}
    result = publish(worker.app, getattr(worker, name).name, [body], task_id, headers(task_id))
    with pytest.raises(error, match=message):
        result.get(timeout=TIMEOUT)
    assert worker.marks.get("ran:" + task_id) is None
    assert {tenant: notes_of(admin, tenant) for tenant in TENANTS} == before


def test_a_message_sent_with_nothing_bound_through_the_installed_app_is_refused_on_the_worker(
    worker: ModuleType,
):
    result = worker.write_note_plain.delay("sent with nothing bound")  # the signal cannot stop the send
    with pytest.raises(NoTenantError):
        result.get(timeout=TIMEOUT)
    assert worker.marks.get("ran:" + result.id) is None


# -- the docs -------------------------------------------------------------------------------------------


def docs_samples() -> list[str]:
    jobs = (ROOT / "docs" / "jobs.md").read_text()
    section = jobs[jobs.index("## Celery") :]
    section = section[: m.start()] if (m := re.search(r"^## (?!Celery)", section, re.M)) else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_python_sample_of_the_docs_celery_section_is_an_example_file():
    samples = docs_samples()
    assert len(samples) == 2
    for sample in samples:
        first, _, body = sample.partition("\n")
        match = re.fullmatch(r"# (examples/[\w/]+\.py)", first)
        assert match, f"a sample must start with '# examples/<file>.py': {first!r}"
        assert (ROOT / match.group(1)).read_text() == body


def test_the_docs_examples_run_in_the_celery_worker(worker: ModuleType, admin: Engine):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import celery_enqueue  # type: ignore[import-not-found]
        import celery_worker  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "examples"))
    before = {tenant: notes_of(admin, tenant) for tenant in [*TENANTS, *FANOUT]}
    assert celery_enqueue.add_note_for(str(A), "from the docs") == before[A] + 1
    with tenant_context(B):
        assert celery_worker.count_notes.delay().get(timeout=TIMEOUT) == before[B]

    celery_worker.add_note_everywhere.delay().get(timeout=TIMEOUT)  # what beat sends at 03:00, unbound
    deadline = time.monotonic() + TIMEOUT
    while (daily := daily_notes(admin)) != sorted(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daily == sorted(before)  # one note per tenant, written as that tenant


def daily_notes(admin: Engine) -> list[uuid.UUID]:
    with admin.connect() as conn:
        return sorted(conn.execute(text("SELECT tenant_id FROM notes WHERE body = 'daily'")).scalars())


# -- eager mode and configuration (fast unit tests; the worker above is the proof) ---------------------


def eager(**settings: Any) -> Celery:
    app = Celery("eager", set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True, **settings)
    return app


def test_sending_a_tenant_task_with_nothing_bound_fails_where_it_is_sent():
    app, ran = eager(), []

    @app.task(base=TenantTask)
    def job() -> None:
        ran.append(current_binding())

    with pytest.raises(NoTenantError, match="no tenant is bound"):
        job.delay()
    with pytest.raises(NoTenantError):
        job.apply().get()
    assert ran == []
    with tenant_context(A):
        job.delay()
    with without_tenant():
        job.delay()
    assert ran == [str(A), NO_TENANT]  # bound as a worker binds it: the id as its canonical text


def test_an_eager_task_runs_as_its_caller_and_a_direct_call_is_a_plain_call():
    app = eager()
    install(app, signing_key=KEY)

    @app.task
    def plain() -> object:
        return current_tenant_id()

    @app.task(base=TenantTask, bind=True)
    def headers(self: TenantTask) -> dict[str, str]:
        return dict(self.request.headers)

    app.finalize()  # install() guards the bodies of a finalized app's tasks (a worker's always is)

    with tenant_context(B):
        assert plain.delay().get() == str(B)
        assert plain() == B  # a plain call: the caller's own binding
        sent = headers.apply_async(countdown=7200).get()
    assert sent[BINDING] == "tenant:" + str(B)
    assert abs(int(sent[EXPIRES]) - (time.time() + 86400 + 7200)) < 5  # the countdown extends the signature
    with pytest.raises(NoTenantError):
        plain.delay().get()


def test_tenant_free_tasks_run_as_no_tenant_unless_sent_with_one():
    app = eager()
    install(app, tenant_free=["listed"])

    @app.task(base=TenantTask, tenant_free=True)
    def declared() -> object:
        return current_binding()

    @app.task(name="listed")
    def listed() -> object:
        return current_binding()

    assert declared.delay().get() is NO_TENANT
    assert listed.delay().get() is NO_TENANT
    with tenant_context(A):
        assert declared.delay().get() == str(A)


def test_configuration_mistakes_are_refused():
    with pytest.raises(ConfigurationError, match="TenantTask"):
        tenant_task(base=object)
    with pytest.raises(ConfigurationError, match="key_type"):
        install(eager(), key_type="email")
    with pytest.raises(ConfigurationError, match="ttl"):
        install(eager(), ttl=0)
    with pytest.raises(ConfigurationError, match="list of task names"):
        install(eager(), tenant_free="nightly")


def test_without_celery_the_import_names_the_extra_to_install():
    run = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['celery'] = None; import pgtenancy.jobs.celery"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "pip install 'pgtenancy[celery]'" in run.stderr
