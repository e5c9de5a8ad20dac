"""The library type-checks under ``mypy --strict`` (configured in pyproject.toml): its public API is typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    sqlalchemy.__version__.startswith("2.0."),
    reason="typed against SQLAlchemy 2.1's annotations (2.0's differ); checked with the latest releases",
)
def test_the_library_type_checks_strictly():
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
