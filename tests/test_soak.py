"""A small run of the fault-injection soak (``python -m benchmarks.soak``): every invariant holds, on every
mode, driver and route, while backends are killed, statements cancelled, PostgreSQL and PgBouncer restarted.
"""

from __future__ import annotations

import shutil

import pytest
from benchmarks.soak import Plan, Report, run, summary

TRANSACTIONS = 1_500

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="the pgbouncer binary is not installed"),
]


@pytest.fixture(scope="module")
def report() -> Report:
    return run(Plan.make(TRANSACTIONS, quick=True))


def test_no_invariant_is_violated(report: Report) -> None:
    info = summary(report)
    assert info["violations"] == {}, [sample for cell in report.cells for sample in cell.samples]
    assert info["unattributed_rows"] == 0
    assert all("TenantSwitchError" not in cell.errors for cell in report.cells)
    assert not any(kind.startswith("unexpected") for cell in report.cells for kind in cell.errors), info


def test_every_cell_ran_its_share(report: Report) -> None:
    assert len(report.cells) == 18  # 2 routes x 3 drivers x 3 modes
    assert report.progress.completed >= TRANSACTIONS and not report.progress.timed_out
    for cell in report.cells:
        assert cell.counts["transactions"] >= report.progress.quota, cell.name
        assert cell.counts["reads"] and cell.counts["settings"] and cell.counts["writes"], cell.name
        assert len(cell.committed) == cell.counts["writes"], cell.name


def test_every_fault_kind_happened(report: Report) -> None:
    faults = report.faults
    assert faults.kills.total() > 0
    assert faults.restarts == {"postgres": 1, "pgbouncer": 1}
    assert sum(cell.counts["cancels"] for cell in report.cells) > 0
    assert sum(cell.counts["statement_errors"] for cell in report.cells) > 0
    for route in ("direct", "pgbouncer"):  # the faults reached the workers on both routes
        cells = [cell for cell in report.cells if cell.route == route]
        assert sum(cell.errors["terminated"] + cell.errors["connection"] for cell in cells) > 0, route
    assert report.shortfalls() == []
