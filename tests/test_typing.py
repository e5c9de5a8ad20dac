"""The library type-checks under ``mypy --strict`` (configured in pyproject.toml): its public API is typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_library_type_checks_strictly():
    run = subprocess.run(  # noqa: S603 - a fixed command
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
