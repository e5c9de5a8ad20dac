"""Throwaway PostgreSQL servers on loopback for scale-out tests: a Citus cluster and a streaming replica."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.pool import NullPool

from pgtenancy.errors import TenancyError
from pgtenancy.testing.server import TestServer

__all__ = [
    "PG_CONFIG_ENV",
    "CitusCluster",
    "ClusterStartError",
    "ClusterUnavailableError",
    "PgBinaries",
    "PgNode",
    "ReplicaPair",
    "StandaloneServer",
    "find_binaries",
    "start_citus_cluster",
    "start_replica_pair",
    "start_standalone",
]

PG_CONFIG_ENV = "PGTENANCY_PG_CONFIG"  # path of the pg_config whose server binaries the clusters use
_DEBIAN_PG_CONFIGS = "/usr/lib/postgresql/*/bin/pg_config"
_HOST = "127.0.0.1"
_START_ATTEMPTS = 3
_SUPERUSER = "postgres"
_SERVER_OS_USER = "postgres"  # PostgreSQL refuses to run as root: as root, servers run as this user
_SETTINGS: dict[str, str] = {
    "listen_addresses": _HOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "200",
    "logging_collector": "off",
}


class ClusterUnavailableError(TenancyError):
    """The PostgreSQL server binaries (or the Citus extension) a local cluster needs are missing."""


class ClusterStartError(TenancyError):
    """A server of a local cluster did not start or stop (its program's output and log say why)."""


@dataclass(frozen=True)
class PgBinaries:
    """One PostgreSQL installation: its programs, libraries and extension files."""

    bindir: Path
    pkglibdir: Path
    sharedir: Path
    version: str

    def tool(self, name: str) -> str:
        """Absolute path of program ``name`` (``initdb``, ``pg_ctl``, ``pg_basebackup`` ...)."""
        return str(self.bindir / name)

    def citus_problem(self) -> str | None:
        """Why the Citus extension cannot be used with these binaries, or ``None`` when it can."""
        if not (self.pkglibdir / "citus.so").is_file():
            return f"citus.so is not in this PostgreSQL's library directory ({self.version})"
        if not (self.sharedir / "extension" / "citus.control").is_file():
            return f"the citus extension control file is not installed ({self.version})"
        return None


def find_binaries(*, citus: bool = False) -> PgBinaries:
    """The server binaries to start clusters with: ``$PGTENANCY_PG_CONFIG``, ``pg_config``, or Debian's.

    :param citus: also require the Citus extension (library and control file) to be installed.
    :raises ClusterUnavailableError: with the reason, when nothing usable is found.
    """
    problems: list[str] = []
    for pg_config in _pg_config_candidates():
        try:
            binaries = _read_pg_config(pg_config)
        except ClusterUnavailableError as error:
            problems.append(str(error))
            continue
        missing = [
            name
            for name in ("initdb", "pg_ctl", "postgres", "pg_basebackup")
            if not _runnable(binaries, name)
        ]
        if missing:
            problems.append(f"{pg_config}: no {', '.join(missing)}")
            continue
        problem = binaries.citus_problem() if citus else None
        if problem is None:
            return binaries
        problems.append(f"{pg_config}: {problem}")
    reason = "; ".join(problems) or "no pg_config found (set " + PG_CONFIG_ENV + ")"
    raise ClusterUnavailableError("no PostgreSQL server binaries to start a local cluster: " + reason)


def _pg_config_candidates() -> list[str]:
    explicit = os.environ.get(PG_CONFIG_ENV)
    if explicit:
        return [explicit]
    found = [shutil.which("pg_config")]
    found += sorted((str(path) for path in Path("/").glob(_DEBIAN_PG_CONFIGS.lstrip("/"))), reverse=True)
    return list(dict.fromkeys(path for path in found if path))


def _read_pg_config(pg_config: str) -> PgBinaries:
    flags = ("--bindir", "--pkglibdir", "--sharedir", "--version")
    try:
        result = subprocess.run([pg_config, *flags], capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as error:
        raise ClusterUnavailableError(f"{pg_config} cannot be run: {error.strerror}") from error
    lines = result.stdout.splitlines()
    if result.returncode != 0 or len(lines) != len(flags):
        raise ClusterUnavailableError(f"{pg_config} failed: {result.stderr.strip()}")
    bindir, pkglibdir, sharedir, version = lines
    return PgBinaries(Path(bindir), Path(pkglibdir), Path(sharedir), version)


def _runnable(binaries: PgBinaries, name: str) -> bool:
    return os.access(binaries.tool(name), os.X_OK)


@dataclass(frozen=True)
class PgNode:
    """One running server of a local cluster, listening on loopback TCP."""

    name: str
    port: int
    data_dir: Path

    def url(
        self,
        *,
        database: str = "postgres",
        username: str = _SUPERUSER,
        password: str | None = None,
        drivername: str = "postgresql+psycopg",
    ) -> URL:
        """A URL to this node (the superuser unless ``username`` is given)."""
        return URL.create(
            drivername, username=username, password=password, host=_HOST, port=self.port, database=database
        )

    def server(self, database: str = "postgres") -> TestServer:
        """This node as a ``TestServer`` whose admin URL points at ``database`` (for the role helpers)."""
        return TestServer(admin_url=self.url(database=database), source="cluster")


class _Launcher:
    """Runs initdb / pg_ctl / pg_basebackup under an unprivileged OS user, in one temporary directory."""

    def __init__(self, binaries: PgBinaries) -> None:
        self.binaries = binaries
        self._uid, self._gid = _server_user()
        self._running: list[PgNode] = []
        self.root = Path(tempfile.mkdtemp(prefix="pgtenancy-cluster-"))
        atexit.register(self.stop_all)  # servers outlive this process unless stopped: never leave them
        os.chown(self.root, self._uid, self._gid)

    def run(self, tool: str, *args: str) -> None:
        """Run one of the PostgreSQL programs as the server's OS user; its output goes to the error."""
        as_root = os.geteuid() == 0
        result = subprocess.run(  # noqa: S603
            [self.binaries.tool(tool), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
            user=self._uid if as_root else None,
            group=self._gid if as_root else None,
            extra_groups=[] if as_root else None,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"},
        )
        if result.returncode != 0:
            raise ClusterStartError(f"{tool} failed: {(result.stderr or result.stdout).strip()}")

    def initdb(self, name: str) -> Path:
        """A fresh data directory named ``name``, trusting loopback connections (test servers only)."""
        data_dir = self.root / name
        self.run("initdb", "-D", str(data_dir), "-U", _SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        return data_dir

    def start(self, name: str, data_dir: Path, settings: dict[str, str] | None = None) -> PgNode:
        """Start the server of ``data_dir`` on a free loopback port with the fast test settings.

        A port taken between choosing it and binding it is retried with another one.
        """
        log = self.root / (name + ".log")
        attempt = 0
        while True:
            attempt += 1
            node = PgNode(name=name, port=_free_port(), data_dir=data_dir)
            lines = {**_SETTINGS, "port": str(node.port), "unix_socket_directories": str(self.root)}
            lines.update(settings or {})
            with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:  # later lines win
                conf.writelines(f"{key} = {_conf_value(value)}\n" for key, value in lines.items())
            self._running.append(node)
            try:
                self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(data_dir), "-l", str(log))
                return node
            except ClusterStartError as error:
                self._running.remove(node)
                server_log = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
                if "already in use" not in server_log or attempt == _START_ATTEMPTS:
                    raise ClusterStartError(f"{name}: {error}; server log: {server_log[-2000:]}") from error

    def stop_all(self) -> None:
        """Stop every server started here (immediately: the data is thrown away) and remove the directory."""
        while self._running:
            node = self._running.pop()
            with contextlib.suppress(ClusterStartError):
                self.run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(node.data_dir))
        shutil.rmtree(self.root, ignore_errors=True)


def _server_user() -> tuple[int, int]:
    """The OS user the servers run as: ourselves, or (as root) an unprivileged user made if missing."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(_SERVER_OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", _SERVER_OS_USER], check=True, capture_output=True)  # noqa: S603,S607
        entry = pwd.getpwnam(_SERVER_OS_USER)
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _conf_value(value: str) -> str:
    """A postgresql.conf value: single-quoted, quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _on_node(node: PgNode, database: str, statements: Callable[[Connection], object]) -> None:
    """Run ``statements`` as the superuser on ``node``, outside a transaction."""
    engine = create_engine(node.url(database=database), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            statements(conn)
    finally:
        engine.dispose()


def _quoted(name: str) -> str:
    return str(postgresql.dialect().identifier_preparer.quote(name))  # type: ignore[no-untyped-call]


@dataclass
class CitusCluster:
    """A running Citus coordinator and its workers, with the extension created in ``database``."""

    coordinator: PgNode
    workers: tuple[PgNode, ...]
    database: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def server(self) -> TestServer:
        """The coordinator as a ``TestServer`` on the Citus database: roles made there reach the workers."""
        return self.coordinator.server(self.database)

    def url(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        drivername: str = "postgresql+psycopg",
    ) -> URL:
        """A URL to the Citus database on the coordinator (the superuser unless ``username`` is given)."""
        return self.server.url(username=username, password=password, drivername=drivername)

    def worker_url(self, index: int = 0, *, drivername: str = "postgresql+psycopg") -> URL:
        """A superuser URL to the Citus database on worker ``index`` (to look at shards)."""
        return self.workers[index].url(database=self.database, drivername=drivername)

    def stop(self) -> None:
        """Stop every node and remove its data directory."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def start_citus_cluster(*, workers: int = 2, database: str = "pgtenancy") -> CitusCluster:
    """Start a coordinator and ``workers`` workers on loopback, with Citus created and the workers added.

    Each node has its own data directory under one temporary directory, ``shared_preload_libraries =
    'citus'`` and, on the coordinator, ``citus.propagate_set_commands = 'local'`` (so ``SET LOCAL``
    reaches the workers a transaction uses). Call ``stop()`` on the result to tear it all down.

    :raises ClusterUnavailableError: when the server binaries or the Citus extension are missing.
    :raises ClusterStartError: when a node does not start (nothing is left running).
    """
    launcher = _Launcher(find_binaries(citus=True))
    try:
        names = ["coordinator", *(f"worker{n}" for n in range(1, workers + 1))]
        nodes = [_start_citus_node(launcher, name) for name in names]
        for node in nodes:
            _on_node(
                node, "postgres", lambda conn: conn.exec_driver_sql("CREATE DATABASE " + _quoted(database))
            )
            _on_node(node, database, lambda conn: conn.exec_driver_sql("CREATE EXTENSION citus"))
        coordinator, worker_nodes = nodes[0], tuple(nodes[1:])
        _on_node(coordinator, database, lambda conn: _register(conn, coordinator, worker_nodes))
    except BaseException:
        launcher.stop_all()
        raise
    return CitusCluster(coordinator, worker_nodes, database, _stop=launcher.stop_all)


def _start_citus_node(launcher: _Launcher, name: str) -> PgNode:
    settings = {"shared_preload_libraries": "citus"}
    if name == "coordinator":
        settings["citus.propagate_set_commands"] = "local"
    return launcher.start(name, launcher.initdb(name), settings)


def _register(conn: Connection, coordinator: PgNode, workers: Iterable[PgNode]) -> None:
    """Tell the coordinator where it and its workers listen."""
    conn.execute(
        text("SELECT citus_set_coordinator_host(:host, :port)"), {"host": _HOST, "port": coordinator.port}
    )
    for worker in workers:
        conn.execute(text("SELECT citus_add_node(:host, :port)"), {"host": _HOST, "port": worker.port})


@dataclass
class ReplicaPair:
    """A primary and a hot standby streaming from it (both on loopback, superuser ``postgres``)."""

    primary: PgNode
    standby: PgNode
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def wait_for_replay(self, timeout: float = 10.0) -> None:
        """Block until the standby has replayed everything the primary has written so far."""
        primary = create_engine(self.primary.url(), poolclass=NullPool)
        standby = create_engine(self.standby.url(), poolclass=NullPool)
        try:
            with primary.connect() as conn:
                target = conn.execute(text("SELECT pg_current_wal_insert_lsn()")).scalar_one()
            deadline = time.monotonic() + timeout
            with standby.connect() as conn:
                while True:
                    replayed = conn.execute(
                        text("SELECT pg_last_wal_replay_lsn() >= CAST(:target AS pg_lsn)"), {"target": target}
                    ).scalar_one()
                    conn.rollback()
                    if replayed:
                        return
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the standby did not replay up to {target} in {timeout} s")
                    time.sleep(0.02)
        finally:
            primary.dispose()
            standby.dispose()

    def stop(self) -> None:
        """Stop both servers and remove their data directories."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def start_replica_pair() -> ReplicaPair:
    """Start a primary and a streaming hot standby of it, made with ``pg_basebackup -R``.

    :raises ClusterUnavailableError: when the server binaries (with ``pg_basebackup``) are missing.
    :raises ClusterStartError: when a server does not start (nothing is left running).
    """
    launcher = _Launcher(find_binaries())
    try:
        primary = launcher.start("primary", launcher.initdb("primary"))
        standby_dir = launcher.root / "standby"
        launcher.run(
            "pg_basebackup", "-D", str(standby_dir), "-R", "-X", "stream", "-c", "fast",
            "-h", _HOST, "-p", str(primary.port), "-U", _SUPERUSER,
        )  # fmt: skip
        standby = launcher.start("standby", standby_dir, {"hot_standby": "on"})
    except BaseException:
        launcher.stop_all()
        raise
    return ReplicaPair(primary, standby, _stop=launcher.stop_all)


@dataclass
class StandaloneServer:
    """One server on loopback with settings of its own (e.g. ``shared_preload_libraries``)."""

    node: PgNode
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the server and remove its data directory."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def start_standalone(settings: dict[str, str] | None = None) -> StandaloneServer:
    """Start one server with ``settings`` added to the fast test settings (trusted constants).

    :raises ClusterUnavailableError: when the server binaries are missing.
    :raises ClusterStartError: when the server does not start (nothing is left running).
    """
    launcher = _Launcher(find_binaries())
    try:
        node = launcher.start("standalone", launcher.initdb("standalone"), settings)
    except BaseException:
        launcher.stop_all()
        raise
    return StandaloneServer(node, _stop=launcher.stop_all)
