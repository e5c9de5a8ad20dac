"""A corpus of realistic holes between tenants, and a correct database full of traps, to measure the audit.

Each hole (``Hole``) is built in a schema of its own with an app role of its own, exploited for real as
that role, and audited (``audit(schemas=[its schema], role=its app role)``): a hole is *named* when an
error or warning finding is on one of the objects it expects. ``python -m tests.audit_corpus`` prints
the score.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pgtenancy.audit import Finding, Report
from pgtenancy.testing import TestDatabase
from tests.audit_corpus import functions, objects, policies, roles, seals, tables
from tests.audit_corpus.case import (
    Case,
    Hole,
    admin_engine,
    drop_own_database,
    harden,
    open_case,
    own_database,
)

__all__ = [
    "HOLES",
    "Built",
    "Score",
    "build_hole",
    "built_holes",
    "harden",
    "is_named",
    "named_by",
    "score_hole",
]

HOLES: list[Hole] = [
    *policies.HOLES,
    *roles.HOLES,
    *tables.HOLES,
    *objects.HOLES,
    *functions.HOLES,
    *seals.HOLES,
]


@dataclass
class Built:
    """A hole as built: its case, the objects it expects (filled in), or why it could not be built."""

    hole: Hole
    case: Case | None = None
    expect: tuple[str, ...] = ()
    unavailable: str | None = None
    error: str | None = None


def build_hole(database: TestDatabase, hole: Hole) -> Built:
    """Build ``hole`` in a fresh schema (and database, if it needs its own); errors are kept, not raised."""
    built = Built(hole)
    if hole.unavailable is not None:
        admin = admin_engine(database)
        try:
            built.unavailable = hole.unavailable(admin)
        finally:
            admin.dispose()
        if built.unavailable:
            return built
    target = own_database(database) if hole.own_database else database
    try:
        case = open_case(target, label=hole.id)
    except Exception as error:  # the case itself could not be made: report it on the hole
        built.error = f"{type(error).__name__}: {error}"
        return built
    case.own_database = hole.own_database
    built.case = case
    try:
        hole.build(case)
        built.expect = tuple(case.fill(e) for e in hole.expect)
    except Exception as error:
        built.error = f"{type(error).__name__}: {error}"
    return built


def close_hole(database: TestDatabase, built: Built) -> None:
    if built.case is None:
        return
    try:
        built.case.close()
    finally:
        built.case.admin.dispose()
        if built.case.own_database:
            drop_own_database(database, built.case.database)


@contextmanager
def built_holes(database: TestDatabase, holes: list[Hole] = HOLES) -> Iterator[dict[str, Built]]:
    """Every hole built in ``database`` (hardened first), dropped afterwards."""
    harden(database)
    built: dict[str, Built] = {}
    try:
        for hole in holes:
            built[hole.id] = build_hole(database, hole)
        yield built
    finally:
        failures = []
        for one in built.values():
            try:
                close_hole(database, one)
            except Exception as error:  # close the others, then say what was left behind
                failures.append(f"{one.hole.id}: {type(error).__name__}: {error}")
        if failures:
            raise RuntimeError("could not drop every hole: " + "; ".join(failures))


def is_named(finding_object: str, expected: str) -> bool:
    """Whether a finding on ``finding_object`` names ``expected``; a policy on a table names the table."""
    if finding_object == expected:
        return True
    if expected.startswith("table ") and finding_object.startswith("policy "):
        return finding_object.endswith(" on " + expected.removeprefix("table "))
    return False


def named_by(report: Report, expect: tuple[str, ...]) -> list[Finding]:
    """The errors and warnings of ``report`` that name one of the ``expect``ed objects."""
    return [f for f in report.failing if any(is_named(f.object, e) for e in expect)]


@dataclass
class Score:
    """What the audit said about one hole."""

    id: str
    named: bool
    findings: list[Finding] = field(default_factory=list)  # the ones that name it
    others: list[Finding] = field(default_factory=list)  # errors and warnings on other objects
    seconds: float = 0.0
    error: str | None = None


def score_hole(built: Built, *, dynamic: bool = True) -> Score:
    """Audit the hole's schema as the superuser for its app role; named when a finding names it."""
    if built.case is None or built.error:
        return Score(built.hole.id, False, error=built.error or built.unavailable)
    started = time.perf_counter()
    try:
        report = built.case.audit(dynamic=dynamic)
    except Exception as error:
        return Score(built.hole.id, False, error=f"{type(error).__name__}: {error}")
    seconds = time.perf_counter() - started
    naming = named_by(report, built.expect)
    others = [f for f in report.failing if f not in naming]
    return Score(built.hole.id, bool(naming), naming, others, seconds)
