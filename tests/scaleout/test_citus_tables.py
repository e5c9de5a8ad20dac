"""pgtenancy.citus: distributing tenant tables is idempotent, refuses contradictions, needs Citus."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql

from pgtenancy import TenancyError
from pgtenancy.citus import (
    CitusDistributionError,
    CitusNotAvailableError,
    Distribution,
    citus_version,
    create_distributed_table,
    create_reference_table,
    distributed_table_sql,
    distribution_of,
    undistribute_table,
)
from tests.scaleout.schema import SHARD_COUNT

TABLES = ("ops_parent", "ops_child", "ops_plans", "ops_loner")


@pytest.fixture
def owner(citus_app):
    """An owner connection with four plain tables, dropped afterwards."""
    engine = create_engine(citus_app.url("owner"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for table in TABLES:
            conn.exec_driver_sql(
                f"CREATE TABLE {table} (tenant_id uuid NOT NULL, id bigint NOT NULL, code text)"
            )
        conn.exec_driver_sql(
            "INSERT INTO ops_parent VALUES (gen_random_uuid(), 1, 'a'), (gen_random_uuid(), 2, 'b')"
        )
        yield conn
        conn.exec_driver_sql("DROP TABLE IF EXISTS " + ", ".join(TABLES))
    engine.dispose()


def _colocation(conn, table):
    return conn.scalar(
        text("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = CAST(:t AS regclass)"),
        {"t": table},
    )


def test_distributing_twice_does_it_once(owner):
    assert distribution_of(owner, "ops_parent") is None
    assert create_distributed_table(owner, "ops_parent", "tenant_id") is True
    assert create_distributed_table(owner, "ops_parent", "tenant_id", schema="tenancy") is False
    assert distribution_of(owner, "ops_parent") == Distribution("distributed", "tenant_id")
    shards = owner.scalar(
        text("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'ops_parent'::regclass")
    )
    assert shards == SHARD_COUNT
    assert owner.scalar(text("SELECT count(*) FROM ops_parent")) == 2


def test_colocation_follows_the_table_named_or_none(owner):
    create_distributed_table(owner, "ops_parent")
    create_distributed_table(owner, "ops_child", colocate_with="ops_parent")
    create_distributed_table(owner, "ops_loner", colocate_with="none")
    assert (
        _colocation(owner, "ops_child") == _colocation(owner, "ops_parent") != _colocation(owner, "ops_loner")
    )


def test_a_contradicting_distribution_is_refused_and_changes_nothing(owner):
    create_distributed_table(owner, "ops_parent", "tenant_id")
    with pytest.raises(CitusDistributionError, match=r"distributed by 'tenant_id'.*undistribute_table"):
        create_distributed_table(owner, "ops_parent", "id")
    with pytest.raises(CitusDistributionError, match="already a distributed table"):
        create_reference_table(owner, "ops_parent")
    assert distribution_of(owner, "ops_parent") == Distribution("distributed", "tenant_id")


def test_reference_tables_and_their_reverse(owner):
    assert create_reference_table(owner, "ops_plans") is True
    assert create_reference_table(owner, "ops_plans") is False
    assert distribution_of(owner, "ops_plans") == Distribution("reference")
    with pytest.raises(CitusDistributionError, match="already a reference table"):
        create_distributed_table(owner, "ops_plans")
    assert undistribute_table(owner, "ops_plans") is True
    assert undistribute_table(owner, "ops_plans") is False
    assert distribution_of(owner, "ops_plans") is None


def test_undistributing_keeps_the_rows(owner):
    create_distributed_table(owner, "ops_parent")
    assert undistribute_table(owner, "ops_parent") is True
    assert distribution_of(owner, "ops_parent") is None
    assert owner.scalar(text("SELECT count(*) FROM ops_parent")) == 2


def test_a_hostile_table_name_stays_a_name(owner):
    hostile = "ops_parent'); DROP TABLE ops_child; --"
    with pytest.raises(CitusDistributionError, match="does not exist"):
        create_distributed_table(owner, hostile)
    with pytest.raises(CitusDistributionError, match="invalid table name"):
        create_reference_table(owner, "")
    assert owner.scalar(text("SELECT to_regclass('ops_child') IS NOT NULL")) is True


def test_the_guarded_statement_renders_for_offline_scripts():
    statement = distributed_table_sql("Notes", schema="app", colocate_with="Plans")
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    assert sql == (
        "SELECT create_distributed_table(CAST('app.\"Notes\"' AS regclass), 'tenant_id', "
        "colocate_with => 'app.\"Plans\"') "
        "WHERE NOT EXISTS (SELECT FROM pg_dist_partition "
        "WHERE logicalrelid = CAST('app.\"Notes\"' AS regclass))"
    )


def test_a_server_without_citus_gets_a_clear_error(citus_app):
    """The coordinator's ``postgres`` database has no Citus extension."""
    engine = create_engine(citus_app.cluster.coordinator.url(database="postgres"))
    with engine.connect() as conn:
        assert citus_version(conn) is None
        conn.exec_driver_sql("CREATE TEMP TABLE plain (tenant_id uuid)")
        for operation in (create_distributed_table, create_reference_table, undistribute_table):
            with pytest.raises(CitusNotAvailableError, match="CREATE EXTENSION citus") as caught:
                operation(conn, "plain")
            assert isinstance(caught.value, TenancyError)
    engine.dispose()
