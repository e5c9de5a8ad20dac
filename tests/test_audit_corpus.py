"""The corpus of holes between tenants: each one exploitable for real, and what the audit names of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgtenancy.testing import TestDatabase
from tests.audit_corpus import HOLES, Built, built_holes

pytestmark = pytest.mark.usefixtures("pgtenancy_database")


@pytest.fixture(scope="module")
def corpus(pgtenancy_database: TestDatabase) -> Iterator[dict[str, Built]]:
    with built_holes(pgtenancy_database) as built:
        yield built


def built_case(corpus: dict[str, Built], hole_id: str) -> Built:
    built = corpus[hole_id]
    if built.unavailable:
        pytest.skip(built.unavailable)
    assert built.error is None, built.error
    assert built.case is not None
    return built


@pytest.mark.parametrize("hole_id", [hole.id for hole in HOLES])
def test_hole_is_exploitable(corpus: dict[str, Built], hole_id: str) -> None:
    built = built_case(corpus, hole_id)
    assert built.case is not None
    evidence = built.hole.exploit(built.case)
    assert evidence
