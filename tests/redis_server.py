"""A real Redis for the job-queue tests: Debian's ``redis-server`` on a free loopback port, no persistence.

As root it runs as ``nobody`` (a fixture must not run services as root); where ``redis-server`` is
missing the tests that need it skip and say so. ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

START_SECONDS = 10.0
MISSING = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """A running ``redis-server``; yields its ``redis://127.0.0.1:PORT/0`` URL and stops it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(MISSING)
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="pgtenancy-redis-")
    user = pwd.getpwnam("nobody") if os.getuid() == 0 else None
    if user is not None:
        os.chown(workdir, user.pw_uid, user.pw_gid)
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", workdir, "--protected-mode", "no"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=user.pw_uid if user is not None else None,
        group=user.pw_gid if user is not None else None,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stderr.read() if process.stderr is not None else b""
                raise RuntimeError("redis-server did not start: " + output.decode()[-2000:])
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process, timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], *, timeout: float) -> None:
    """Ask a server process of the tests to stop; kill it if it has not within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One Redis server for the whole run (skipped, with the reason, where redis-server is missing)."""
    with redis_server() as url:
        yield url
