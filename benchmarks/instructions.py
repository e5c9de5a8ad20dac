"""P1 by instruction count: the client's CPU instructions per point select, counted by callgrind.

Throughput on a shared 2-core machine wanders by ±5-10 % between rounds, more than the cost being
measured. Callgrind counts the instructions the client executes instead. Each variant runs in a child
process under ``valgrind --tool=callgrind``, one task (so the event loop's schedule is fixed) and a
fixed hash seed; the per-operation count is the difference between a long and a short run, which
cancels start-up. A count repeats to within 0.01 % alone and 0.5 % beside another run, but memory
layout (the hash seed) moves it by up to 2 %, differently for baseline and candidate: each ratio is
the median over six seeds. The ratio is baseline ÷ candidate instructions: like a throughput ratio,
1.0 is free and lower is costlier. The server's share is not counted here."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks import binding
from benchmarks.harness import Comparison, query_work
from pgtenancy.testing.database import TestDatabase

TENANTS = 50  # few enough that a short warm-up fills pgtenancy's per-tenant cache
SHORT, LONG = 100, 400
SEEDS = tuple(str(seed) for seed in range(6))
MODES = ("begin", "sealed")  # set_config costs ~40 %: throughput shows it; sealed: mode=begin plus a Seal
DRIVERS = (("asyncpg", "postgresql+asyncpg"), ("psycopg", "postgresql+psycopg"))
_COLLECTED = re.compile(r"Collected : (\d+)")


def available() -> bool:
    """Whether valgrind is on the PATH."""
    return shutil.which("valgrind") is not None


def _row(tenant: int) -> dict[str, int]:
    return {"t": tenant, "id": tenant * 100 + 1 + tenant % binding.ROWS_PER_TENANT}


async def _work(url: str, mode: str, operations: int) -> None:
    """The child's workload: a warm-up over every tenant, then ``operations`` point selects in a row."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from pgtenancy import instrument

    engine = create_async_engine(url, pool_size=8, max_overflow=0)
    if mode == "sealed":
        from pgtenancy.seal import Seal

        instrument(engine, key_type="int", seal=Seal(bytes(range(32))))
    elif mode != "plain":
        instrument(engine, key_type="int", mode=mode)  # type: ignore[arg-type]
    tenants = iter(range(operations + TENANTS))
    work = query_work(
        engine, binding.POINT_SELECT, mode != "plain", lambda _: _row(1 + next(tenants) % TENANTS)
    )
    for n in range(TENANTS + operations):
        await work(n)
    await engine.dispose()


def _count(url: str, mode: str, operations: int, seed: str) -> int:
    """Instructions callgrind counts for a child process running ``operations`` point selects."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, "-m", "benchmarks.instructions", url, mode, str(operations)]
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)  # noqa: S603
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError("callgrind printed no instruction count:\n" + done.stderr[-2000:])
    return int(found.group(1))


def per_operation(url: str, mode: str, pool: ThreadPoolExecutor) -> list[float]:
    """Instructions per point select, one figure per hash seed."""
    runs = {(seed, n): pool.submit(_count, url, mode, n, seed) for seed in SEEDS for n in (SHORT, LONG)}
    return [(runs[seed, LONG].result() - runs[seed, SHORT].result()) / (LONG - SHORT) for seed in SEEDS]


async def run(database: TestDatabase, *, rounds: int, seconds: float) -> list[Comparison]:
    """Per driver and mode: no-tenancy instructions ÷ instrumented instructions (``rounds`` unused)."""
    if not available():
        print("instructions: skipped, valgrind is not installed", file=sys.stderr)
        return []
    results = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for label, driver in DRIVERS:
            url = database.url("app", drivername=driver).render_as_string(hide_password=False)
            plain = per_operation(url, "plain", pool)
            for mode in MODES:
                counted = per_operation(url, mode, pool)
                results.append(
                    Comparison(
                        f"P1 client instructions, {label}, mode={mode}: no tenancy / instrumented",
                        [n / 1000 for n in plain],
                        [n / 1000 for n in counted],
                        unit="k instr/op",
                        lower_is_better=True,
                    )
                )
    return results


schema = binding.schema


def main() -> None:
    """Child entry point: ``python -m benchmarks.instructions URL MODE OPERATIONS``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("url")
    parser.add_argument("mode", choices=("plain", *MODES))
    parser.add_argument("operations", type=int)
    args = parser.parse_args()
    asyncio.run(_work(args.url, args.mode, args.operations))


if __name__ == "__main__":
    main()
