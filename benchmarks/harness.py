"""Shared benchmark plumbing: an embedded server, a seeded database, interleaved timed rounds."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, TextClause
from sqlalchemy.ext.asyncio import AsyncEngine

from pgtenancy.context import tenant_context
from pgtenancy.testing.database import (
    TestDatabase,
    TestRoles,
    clone_database,
    create_roles,
    create_template,
    drop_database,
    drop_roles,
)
from pgtenancy.testing.server import find_server


@dataclass
class Comparison:
    """Throughputs of a candidate and its baseline over interleaved rounds."""

    name: str
    baseline: list[float]
    candidate: list[float]
    unit: str = "ops/s"
    lower_is_better: bool = False  # a cost (instructions, latency): the ratio is then baseline ÷ candidate

    @property
    def ratio(self) -> float:
        """Median of per-round ratios, read like a throughput ratio (1.0: free; lower: costlier).

        The median is robust to a noisy neighbour slowing one round.
        """
        pairs = zip(self.baseline, self.candidate, strict=True)
        return statistics.median(b / c if self.lower_is_better else c / b for b, c in pairs)

    def row(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ratio": round(self.ratio, 3),
            "baseline": round(statistics.median(self.baseline), 1),
            "candidate": round(statistics.median(self.candidate), 1),
            "unit": self.unit,
            "rounds": len(self.baseline),
        }


@contextmanager
def benchmark_database(schema: Callable[[Connection, TestRoles], None]) -> Iterator[TestDatabase]:
    """A server (``$PGTENANCY_TEST_DSN`` or embedded) with one database built by ``schema``."""
    server = find_server(docker=False)
    roles = create_roles(server, prefix="pgtb")
    try:
        create_template(server, roles, "pgtb_template", schema)
        yield clone_database(server, "pgtb_template", "pgtb_run", roles)
    finally:
        try:
            drop_database(server, "pgtb_run")
            drop_database(server, "pgtb_template")
            drop_roles(server, roles)
        finally:
            server.stop()


async def throughput(work: Callable[[int], Awaitable[None]], *, tasks: int, seconds: float) -> float:
    """Operations per second of ``tasks`` concurrent loops calling ``work(i)`` for ``seconds``."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(worker: int) -> None:
        nonlocal done
        i = worker
        while time.perf_counter() < deadline:
            await work(i)
            done += 1
            i += tasks

    start = time.perf_counter()
    await asyncio.gather(*(loop(n) for n in range(tasks)))
    return done / (time.perf_counter() - start)


async def compare(
    name: str,
    baseline: Callable[[int], Awaitable[None]],
    candidate: Callable[[int], Awaitable[None]],
    *,
    rounds: int,
    tasks: int,
    seconds: float,
) -> Comparison:
    """Run baseline and candidate in alternating rounds (ABBA order) after one warm-up each."""
    await throughput(baseline, tasks=tasks, seconds=seconds / 2)
    await throughput(candidate, tasks=tasks, seconds=seconds / 2)
    result = Comparison(name, [], [])
    for n in range(rounds):
        order = (baseline, candidate) if n % 2 == 0 else (candidate, baseline)
        figures = {}
        for work in order:
            figures[work] = await throughput(work, tasks=tasks, seconds=seconds)
        result.baseline.append(figures[baseline])
        result.candidate.append(figures[candidate])
    return result


def query_work(
    engine: AsyncEngine, query: TextClause, bind: bool, pick: Callable[[random.Random], dict[str, int]]
) -> Callable[[int], Awaitable[None]]:
    """One query per call for a row ``pick`` chooses (its ``"t"`` is the tenant), in its own transaction.

    :param bind: bind the row's tenant with ``tenant_context`` (instrumented engines) or not (baselines).
    """
    rng = random.Random(7)
    names = [name for name in ("t", "id", "a") if ":" + name in query.text]

    async def work(i: int) -> None:
        row = pick(rng)
        params = {name: row[name] for name in names}
        if bind:
            async with tenant_context(row["t"]), engine.connect() as conn:
                (await conn.execute(query, params)).all()
        else:
            async with engine.connect() as conn:
                (await conn.execute(query, params)).all()

    return work
