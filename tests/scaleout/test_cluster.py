"""The local cluster helpers: they find their binaries or say why not, and leave nothing behind."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from pgtenancy import TenancyError
from pgtenancy.testing.cluster import (
    PG_CONFIG_ENV,
    ClusterUnavailableError,
    PgBinaries,
    find_binaries,
    start_replica_pair,
)


def test_a_missing_pg_config_is_a_clear_unavailability(monkeypatch, tmp_path):
    monkeypatch.setenv(PG_CONFIG_ENV, str(tmp_path / "pg_config"))
    with pytest.raises(ClusterUnavailableError, match="cannot be run") as caught:
        find_binaries()
    assert isinstance(caught.value, TenancyError)


def test_citus_is_reported_missing_from_an_installation_without_it(tmp_path):
    binaries = PgBinaries(tmp_path / "bin", tmp_path / "lib", tmp_path / "share", "PostgreSQL 15.0")
    assert "citus.so" in binaries.citus_problem()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "citus.so").touch()
    assert "control file" in binaries.citus_problem()


def test_a_stopped_pair_leaves_no_server_and_no_directory():
    try:
        pair = start_replica_pair()
    except ClusterUnavailableError as error:
        pytest.skip("no PostgreSQL server binaries: " + str(error))
    root = pair.primary.data_dir.parent
    try:
        assert pair.standby.data_dir.parent == root
        if os.geteuid() == 0:  # PostgreSQL refuses root: the servers run as an unprivileged user
            assert pair.primary.data_dir.stat().st_uid != 0
        engine = create_engine(pair.standby.url())
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT pg_is_in_recovery()")) is True
        engine.dispose()
    finally:
        pair.stop()
    assert not root.exists()
    engine = create_engine(pair.primary.url(), connect_args={"connect_timeout": 2})
    with pytest.raises(OperationalError):
        engine.connect()
    engine.dispose()
