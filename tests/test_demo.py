"""``pgtenancy demo`` runs end to end on its own embedded server, and ``--serve`` serves real requests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from rich.console import Console

from pgtenancy.demo import _report
from pgtenancy.demo.walkthrough import Step

CLI = [sys.executable, "-c", "from pgtenancy.cli import main; main()"]
CLAIMS = [
    "GET /projects as acme",
    "GET /projects as globex",
    "the two tenants share no row",
    "a request with no token is refused",
    "a token with a forged signature is refused",
    "acme writing a row for globex is rejected by the database",
    "acme attaching a task to globex's project is refused",
    "globex's data is unchanged",
    "pgtenancy check finds the demo schema clean",
    "a job queued by acme's request runs bound to acme",
    "the nightly fan-out runs one job per tenant",
    "a job whose tenant header was changed on the way is refused",
]


def test_demo_walkthrough_passes_every_step():
    result = subprocess.run(
        [*CLI, "demo"], capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running upgrade" in result.stdout and "RLS forced" in result.stdout
    for claim in CLAIMS:
        assert re.search(r"✓ " + re.escape(claim), result.stdout), claim
    assert f"{len(CLAIMS)}/{len(CLAIMS)} steps behaved as described." in result.stdout


def test_a_step_that_misbehaves_fails_the_demo(capsys):
    steps = [Step("holds", True, ""), Step("leaks", False, "3 foreign rows")]
    assert _report(steps, Console(file=sys.stdout, width=200)) == 1
    assert "did NOT behave" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_serve_answers_curl_commands_it_prints():
    port = _free_port()
    process = subprocess.Popen(
        [*CLI, "demo", "--serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "4000"},
    )
    try:
        tokens = []
        deadline = time.monotonic() + 90
        while len(tokens) < 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                pytest.fail("the demo server stopped before printing its curl commands")
            tokens += re.findall(r"Bearer ([\w.-]+)'", line)
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        seen = [
            {
                row["tenant_id"]
                for row in httpx.get(
                    f"http://127.0.0.1:{port}/projects", headers={"Authorization": "Bearer " + token}
                ).json()
            }
            for token in tokens
        ]
        assert seen == [{1}, {2}]
        assert httpx.get(f"http://127.0.0.1:{port}/projects").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_demo_extra_installs_every_distribution_the_demo_imports():
    """``pip install 'pgtenancy[demo]'`` then ``pgtenancy demo``: the demo imports with every distribution the
    ``demo`` extra does not require (directly or through its dependencies) made unimportable."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires
    from pathlib import Path

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def installed_by(requirement: Requirement, seen: set[str]) -> None:
        """Add the distribution ``requirement`` names, and all it requires (its extras included)."""
        name = requirement.name.lower().replace("_", "-")
        if name == "pgtenancy":
            for extra in requirement.extras:
                for inner in extras[extra]:
                    installed_by(Requirement(inner), seen)
            return
        key = name + "[" + ",".join(sorted(requirement.extras)) + "]"
        if key in seen:
            return
        seen |= {key, name}
        try:
            found = requires(name) or []
        except PackageNotFoundError:
            return
        for text in found:
            inner = Requirement(text)
            wanted = [{"extra": extra} for extra in requirement.extras or {""}]
            if inner.marker is None or any(inner.marker.evaluate(env) for env in wanted):
                installed_by(inner, seen)

    provided: set[str] = set()
    for requirement in [*project["dependencies"], "pgtenancy[demo]"]:
        installed_by(Requirement(requirement), provided)

    blocked = sorted(
        module
        for module, dists in packages_distributions().items()
        if not any(d.lower().replace("_", "-") in provided | {"pgtenancy"} for d in dists)
    )
    # Import the demo with every module of every other installed distribution made unimportable: an
    # optional import (try/except ImportError) passes, a module the demo needs fails.
    code = (
        "import sys, importlib.abc\n"
        f"BLOCKED = set({blocked!r})\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'{name} is not installed by pgtenancy[demo]', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pgtenancy.demo, pgtenancy.demo.walkthrough, pgtenancy.example.app, pgtenancy.example.worker\n"
        "import pgtenancy.testing.server, pgtenancy.audit, pgtenancy.cli, uvicorn, alembic.command\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
