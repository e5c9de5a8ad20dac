"""Stops an embedded PostgreSQL whose parent process died without stopping it (a killed pytest run).

Started by ``start_embedded`` as ``python -m pgtenancy.testing.watchdog PID [DIRECTORY]`` with a pipe on
its standard input. The parent writes ``stop`` there when it stops the server itself; end of file
without it means the parent is gone: the postmaster ``PID`` gets a fast shutdown (SIGINT), then an
immediate one (SIGQUIT) if it lingers, and ``DIRECTORY`` (its temporary data) is removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

__all__ = ["main"]

_GRACE = 10.0  # seconds a fast shutdown gets before an immediate one


def main(argv: list[str]) -> int:
    """Wait for the parent's word or its death; on death, stop the postmaster and remove its directory."""
    if sys.stdin.readline().strip() == "stop":
        return 0
    pid = int(argv[0])
    for sig in (signal.SIGINT, signal.SIGQUIT):
        if not _signal(pid, sig) or _exited(pid, _GRACE):
            break
    if len(argv) > 1:
        shutil.rmtree(argv[1], ignore_errors=True)
    return 0


def _signal(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _exited(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
