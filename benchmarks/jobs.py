"""``python -m benchmarks.jobs [--quick]``: what carrying the tenant costs a job, as a ratio to the same job.

Interleaved rounds (ABBA, after a warm-up) of a baseline and a candidate in the same process, each a
loop of jobs whose body is trivial, so the ratio shows the carrier against the queue's own cost (a
plain / plain row shows the noise of the run):

- the carrier alone: ``capture()`` and ``restore()`` around the body, unsigned and signed, vs the body;
- Celery in eager mode (``delay()`` runs the sender's and the worker's side in one call): a ``TenantTask``
  on an app with a signing key, and a plain task of an ``install()``ed app, vs a plain task of an app
  without pgtenancy;
- Celery against a real Redis (where ``redis-server`` is installed): publishing a signed ``TenantTask``
  message vs publishing a plain one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery import Celery, Task
from tests.redis_server import redis_server

from benchmarks.harness import Comparison
from pgtenancy import tenant_context
from pgtenancy.jobs import capture, restore
from pgtenancy.jobs.celery import SIGNING_KEY, TenantTask, install

KEY = "benchmark signing key"
TENANT = uuid.UUID(int=0xB0B)


def body() -> int:
    """The job: trivial on purpose, so that what surrounds it is what is measured."""
    return 1


def rate(job: Callable[[], object], seconds: float) -> float:
    """Jobs per second of ``job`` called in a loop for ``seconds``."""
    done, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(50):
            job()
        done += 50
    return done / (time.perf_counter() - start)


def compare(
    name: str, baseline: Callable[[], object], candidate: Callable[[], object], *, rounds: int, seconds: float
) -> Comparison:
    """Baseline and candidate in alternating rounds (ABBA order) after one warm-up each."""
    rate(baseline, seconds / 2)
    rate(candidate, seconds / 2)
    result = Comparison(name, [], [], unit="jobs/s")
    for n in range(rounds):
        order = (baseline, candidate) if n % 2 == 0 else (candidate, baseline)
        figures = {job: rate(job, seconds) for job in order}
        result.baseline.append(figures[baseline])
        result.candidate.append(figures[candidate])
    return result


def carried(signing_key: str | None) -> Callable[[], object]:
    """The body as a job carrying the tenant: captured where it is sent, restored where it runs."""

    def job() -> object:
        job_id = str(uuid.uuid4())
        headers = capture(signing_key=signing_key, job_id=job_id)
        with restore(headers, signing_key=signing_key, job_id=job_id):
            return body()

    return job


def bare() -> object:
    """The body as a job without a tenant: still given an id, as every queued job is."""
    str(uuid.uuid4())
    return body()


def eager_app(name: str) -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    return app


def celery_jobs() -> tuple[Task, Task, Task, Task]:
    """Plain tasks of two apps without pgtenancy, a signed TenantTask, a plain task of an installed app."""
    plain, again = eager_app("plain"), eager_app("again")
    tenant, installed = eager_app("tenant"), eager_app("installed")
    tenant.conf.update({SIGNING_KEY: KEY})
    install(installed, signing_key=KEY)
    tasks = (plain.task(body), again.task(body), tenant.task(body, base=TenantTask), installed.task(body))
    for app in (plain, again, tenant, installed):
        app.finalize()
    return tasks


@contextmanager
def broker_apps() -> Iterator[tuple[Callable[[], object], Callable[[], object]] | None]:
    """A plain task and a signed TenantTask whose apps publish to a real Redis (``None`` without one)."""
    if shutil.which("redis-server") is None:
        yield None
        return
    with redis_server() as url:
        apps = [Celery(name, broker=url, set_as_current=False) for name in ("plain", "tenant")]
        apps[1].conf.update({SIGNING_KEY: KEY})
        yield apps[0].task(body).delay, apps[1].task(body, base=TenantTask).delay


def run(*, rounds: int, seconds: float) -> list[Comparison]:
    """Every comparison of the module docstring, under one bound tenant (as a request that sends jobs)."""
    with tenant_context(TENANT), broker_apps() as published:
        plain, again, tenant, installed = celery_jobs()
        pairs: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            ("carrier unsigned: capture+restore / body", bare, carried(None)),
            ("carrier signed: capture+restore / body", bare, carried(KEY)),
            ("Celery eager delay(), plain / plain (noise)", plain.delay, again.delay),
            ("Celery eager delay(), TenantTask signed / plain", plain.delay, tenant.delay),
            ("Celery eager delay(), install() signed / plain", plain.delay, installed.delay),
        ]
        if published is not None:
            pairs.append(("Celery delay() to Redis, TenantTask signed / plain", *published))
        return [compare(name, b, c, rounds=rounds, seconds=seconds) for name, b, c in pairs]


def overhead_us(result: Comparison) -> float:
    """Microseconds the candidate adds per job (median rates)."""
    return 1e6 / statistics.median(result.candidate) - 1e6 / statistics.median(result.baseline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a smoke run)")
    args = parser.parse_args(argv)
    rounds, seconds = (2, 0.2) if args.quick else (10, 1.0)
    print(f"{'comparison':<62} {'ratio':>6} {'baseline':>10} {'candidate':>10} {'+us/job':>8}")
    for result in run(rounds=rounds, seconds=seconds):
        row = result.row()
        print(f"{result.name:<62} {row['ratio']:>6} {row['baseline']:>10} {row['candidate']:>10} "
              f"{overhead_us(result):>8.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
