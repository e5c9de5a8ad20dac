"""The embedded server a test run started does not outlive that run, even when the run is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

START = (
    "import sys, time\n"
    "from pgtenancy.testing.server import start_embedded\n"
    "server = start_embedded()\n"
    "print(server.admin_url.query['host'], flush=True)\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _postmaster(socket_dir: str) -> tuple[int, Path]:
    """The postmaster's pid and data directory, from the lock file beside its socket."""
    lock = next(Path(socket_dir).glob(".s.PGSQL.*.lock"))
    data = Path(lock.read_text().splitlines()[1])
    return int((data / "postmaster.pid").read_text().split()[0]), data


def test_a_killed_run_leaves_no_embedded_server_behind():
    run = subprocess.Popen([sys.executable, "-c", START], stdout=subprocess.PIPE, text=True)
    try:
        pid, data = _postmaster(run.stdout.readline().strip())
        assert _alive(pid)
        run.send_signal(signal.SIGKILL)  # no finalizer, no atexit: as when CI or a user kills pytest
        run.wait(timeout=10)
        deadline = time.monotonic() + 30
        while (_alive(pid) or data.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid), "the embedded server outlived the killed run"
        assert not data.exists(), "its temporary data directory was left behind"
    finally:
        if run.poll() is None:
            run.kill()
