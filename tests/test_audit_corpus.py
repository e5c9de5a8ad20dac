"""The corpus of holes between tenants, and a correct database of traps: what the audit names of each.

Every hole is exploited for real as its own NOSUPERUSER NOBYPASSRLS app role (the test fails once the
hole is closed); every trap of the correct database is attacked the same way and must hold. The audit
is then scored against both: ``KNOWN_MISSED`` and ``KNOWN_FALSE_POSITIVES`` are ratchets, asserted
exactly, that shrink as the audit improves. ``python -m tests.audit_corpus`` prints the score table.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgtenancy.testing import TestDatabase
from tests.audit_corpus import HOLES, Built, built_holes, is_named, score_hole
from tests.audit_corpus.correct import TRAPS, Correct, Trap, built_correct, score_correct

# The holes the audit does not name yet. Make the audit name one, then remove its id from here.
KNOWN_MISSED: frozenset[str] = frozenset()

# The (rule, object) errors and warnings the audit reports on the correct database; names are
# normalised: {s} its schema, {app} its app role, {reporting} the BYPASSRLS reporting role ...
KNOWN_FALSE_POSITIVES: frozenset[tuple[str, str]] = frozenset()


@pytest.fixture(scope="module")
def corpus(pgtenancy_database: TestDatabase) -> Iterator[dict[str, Built]]:
    with built_holes(pgtenancy_database) as built:
        yield built


@pytest.fixture(scope="module")
def correct(pgtenancy_database: TestDatabase) -> Iterator[Correct]:
    with built_correct(pgtenancy_database) as built:
        yield built


def test_hole_ids_are_unique_slugs() -> None:
    ids = [hole.id for hole in HOLES]
    assert len(ids) == len(set(ids)) >= 36
    assert all(hole_id.replace("_", "").isalnum() and hole_id.islower() for hole_id in ids)


@pytest.mark.parametrize("hole_id", [hole.id for hole in HOLES])
def test_hole_is_exploitable(corpus: dict[str, Built], hole_id: str) -> None:
    built = corpus[hole_id]
    if built.unavailable:
        pytest.skip(built.unavailable)
    assert built.error is None, built.error
    assert built.case is not None
    with built.case.admin.connect() as conn:  # the exploit runs as a role that RLS binds
        super_, bypass = conn.exec_driver_sql(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = '" + built.case.app + "'"
        ).one()
    assert not super_
    assert not bypass or hole_id == "bypassrls"
    assert built.hole.exploit(built.case)


@pytest.mark.parametrize("trap", TRAPS, ids=[trap.id for trap in TRAPS])
def test_trap_is_safe(correct: Correct, trap: Trap) -> None:
    if trap.id == "typed_columns" and not correct.gist:
        pytest.skip("btree_gist is not available: bookings has no EXCLUDE constraint to test")
    assert trap.attempt(correct.case) == []


def test_audit_names_holes(corpus: dict[str, Built]) -> None:
    scores = {hole_id: score_hole(built) for hole_id, built in corpus.items() if not built.unavailable}
    errors = {hole_id: s.error for hole_id, s in scores.items() if s.error}
    assert not errors, errors
    missed = {hole_id for hole_id, s in scores.items() if not s.named}
    unavailable = {hole_id for hole_id, built in corpus.items() if built.unavailable}
    newly_named = KNOWN_MISSED - missed - unavailable
    assert not newly_named, f"the audit names these now, remove them from KNOWN_MISSED: {sorted(newly_named)}"
    assert missed <= KNOWN_MISSED, (
        f"the audit misses {sorted(missed - KNOWN_MISSED)}; all missed: {sorted(missed)}"
    )


def test_correct_database_is_quiet(correct: Correct) -> None:
    false_positives, _ = score_correct(correct)
    assert false_positives == KNOWN_FALSE_POSITIVES, (
        f"new: {sorted(false_positives - KNOWN_FALSE_POSITIVES)}; "
        f"gone, remove them: {sorted(KNOWN_FALSE_POSITIVES - false_positives)}"
    )


@pytest.mark.parametrize(
    ("finding", "expected", "named"),
    [
        ("table s.t", "table s.t", True),
        ("policy p on s.t", "table s.t", True),
        ("policy p on s.t2", "table s.t", False),
        ("table s.t", "role app", False),
        ("view s.t", "table s.t", False),
    ],
)
def test_what_names_a_hole(finding: str, expected: str, named: bool) -> None:
    assert is_named(finding, expected) is named
