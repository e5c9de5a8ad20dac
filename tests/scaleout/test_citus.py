"""On a real Citus cluster: how the tenant reaches the workers, and that isolation holds there."""

from __future__ import annotations

import re

import psycopg
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pgtenancy import NoTenantError, ddl, tenant_context, without_tenant
from pgtenancy.citus import create_distributed_table
from tests.fuzzing import fuzz, take_fuzz_rows
from tests.scaleout.schema import ROWS_PER_TENANT, SHARD_COUNT, TENANTS, UNWRAPPED, WRAPPED, Note

A, B = TENANTS[0], TENANTS[1]
SEED = 20261123


def test_the_app_role_reaches_every_worker_unprivileged(citus_app):
    for index in range(len(citus_app.cluster.workers)):
        worker = create_engine(citus_app.cluster.worker_url(index))
        with worker.connect() as conn:
            row = conn.execute(
                text("SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = :r"),
                {"r": citus_app.roles.app},
            ).one()
        worker.dispose()
        assert tuple(row) == (False, False, True)


async def _visible(engine, tenant):
    """(count, distinct tenant ids, the coordinator's setting) of ``notes`` seen with ``tenant`` bound."""
    queries = (
        "SELECT count(*) FROM notes",
        "SELECT DISTINCT tenant_id FROM notes",
        "SELECT current_setting('app.current_tenant_id')",
    )
    with tenant_context(tenant):
        if isinstance(engine, AsyncEngine):
            async with engine.connect() as conn:
                results = [(await conn.execute(text(query))).scalars().all() for query in queries]
            await engine.dispose()
        else:
            with engine.connect() as conn:
                results = [conn.execute(text(query)).scalars().all() for query in queries]
    (count,), tenants, (setting,) = results
    return count, tenants, setting


@pytest.mark.parametrize(("driver", "mode"), [("asyncpg", "set_config"), ("psycopg", "set_config")])
async def test_set_config_never_reaches_the_workers_so_reads_fail_closed(citus_app, driver, mode):
    """The coordinator holds the tenant, the shards' policies never see it: no rows, not even its own."""
    count, tenants, on_coordinator = await _visible(citus_app.engine(driver, mode=mode), A)
    assert on_coordinator == str(A)
    assert ROWS_PER_TENANT[A] == 1000
    assert (count, tenants) == (0, [])  # fails closed: nothing leaks, and the app sees nothing


@pytest.mark.parametrize(
    ("driver", "mode"),
    [("asyncpg", "set_local"), ("psycopg", "set_local"), ("asyncpg", "begin"), ("psycopg", "begin")],
)
async def test_set_local_returns_exactly_the_bound_tenants_rows(citus_app, driver, mode):
    """``SET LOCAL`` reaches the workers, alone or sent in the BEGIN message (``mode="begin"``)."""
    for tenant in TENANTS:
        count, tenants, _ = await _visible(citus_app.engine(driver, mode=mode), tenant)
        assert count == ROWS_PER_TENANT[tenant]
        assert tenants == [tenant]


async def test_a_cross_tenant_insert_is_rejected_by_the_shards_with_check(citus_app):
    engine = citus_app.engine("asyncpg", mode="set_local")
    async with tenant_context(A), engine.connect() as conn:
        with pytest.raises(DBAPIError, match="new row violates row-level security policy") as caught:
            await conn.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'forged')"), {"t": B})
    await engine.dispose()
    assert re.search(r'for table "notes_\d+"', str(caught.value)), "the refusal comes from a shard"
    admin = citus_app.admin()
    with admin.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM notes WHERE body = 'forged'")) == 0


def test_set_local_inside_one_multi_statement_string_breaks(citus_app):
    """Citus forwards the whole simple-query string to the shards, so the tenant cannot ride on BEGIN."""
    url = citus_app.url("app")
    connect = {"host": url.host, "port": url.port, "user": url.username, "password": url.password}
    with psycopg.connect(dbname=url.database, autocommit=True, **connect) as conn:
        with pytest.raises(psycopg.Error, match="cannot execute a distributed query from a query on a shard"):
            conn.execute(f"BEGIN; SET LOCAL app.current_tenant_id = '{A}'; SELECT count(*) FROM notes")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        conn.execute(f"SET LOCAL app.current_tenant_id = '{A}'")
        count = conn.execute("SELECT count(*) FROM notes").fetchone()
        conn.execute("COMMIT")
    assert count == (ROWS_PER_TENANT[A],)


def test_a_scalar_subquery_policy_is_refused_on_a_distributed_table(citus_app):
    owner = create_engine(citus_app.url("owner"))
    with owner.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE policy_probe (tenant_id uuid NOT NULL, id bigint NOT NULL, "
            "PRIMARY KEY (tenant_id, id))"
        )
        create_distributed_table(conn, "policy_probe")
        conn.exec_driver_sql("ALTER TABLE policy_probe ENABLE ROW LEVEL SECURITY")
    try:
        with (
            owner.begin() as conn,
            pytest.raises(DBAPIError, match="unexpected non-SELECT command in SubLink"),
        ):
            conn.exec_driver_sql(f"CREATE POLICY wrapped ON policy_probe USING ({WRAPPED})")
        with owner.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE POLICY unwrapped ON policy_probe USING ({UNWRAPPED}) WITH CHECK ({UNWRAPPED})"
            )
            names = (
                conn.execute(text("SELECT policyname FROM pg_policies WHERE tablename = 'policy_probe'"))
                .scalars()
                .all()
            )
        assert names == ["unwrapped"]
    finally:
        with owner.begin() as conn:
            conn.exec_driver_sql("DROP TABLE policy_probe")
        owner.dispose()


def test_the_unwrapped_policy_is_an_index_condition_on_each_shard(citus_app):
    engine = citus_app.engine("psycopg", mode="set_local")
    with tenant_context(A), engine.connect() as conn:
        plan = "\n".join(conn.execute(text("EXPLAIN SELECT body FROM notes WHERE id = 7")).scalars())
    assert f"Task Count: {SHARD_COUNT}" in plan
    assert re.search(
        r"Index Cond: \(\(tenant_id = \(NULLIF\(current_setting\('app\.current_tenant_id", plan
    ), plan


def test_policies_on_a_distributed_table_reach_every_shard(citus_app):
    admin = citus_app.admin()
    with admin.connect() as conn:
        placements = dict(
            conn.execute(
                text(
                    "SELECT p.nodeport, count(*) FROM pg_dist_shard_placement p "
                    "JOIN pg_dist_shard s USING (shardid) "
                    "WHERE s.logicalrelid = 'notes'::regclass GROUP BY p.nodeport"
                )
            ).all()
        )
    assert sum(placements.values()) == SHARD_COUNT
    for index, worker_node in enumerate(citus_app.cluster.workers):
        worker = create_engine(citus_app.cluster.worker_url(index))
        with worker.connect() as conn:
            conn.exec_driver_sql("SET citus.override_table_visibility = off")  # workers hide shards from apps
            shards = conn.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.polname, "
                    "pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid) "
                    "FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid "
                    "WHERE c.relnamespace = 'tenancy'::regnamespace AND c.relkind = 'r' "
                    "AND c.relname ~ '^notes_[0-9]+$'"
                )
            ).all()
        worker.dispose()
        assert len(shards) == placements[worker_node.port] > 0
        for _name, enabled, forced, policy, using, check in shards:
            assert (enabled, forced, policy) == (True, True, "tenant_isolation")
            assert "current_setting('app.current_tenant_id'" in using and using == check


# The foundation's isolation checks, in the mode Citus needs.


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_forgotten_filter_sees_only_the_bound_tenant(citus_app, driver):
    engine = citus_app.engine(driver, mode="set_local")
    for tenant in TENANTS[:3]:
        with tenant_context(tenant):
            if driver == "asyncpg":
                async with async_sessionmaker(engine)() as session:
                    orm = (await session.scalars(select(Note.tenant_id))).all()
                async with engine.connect() as conn:
                    core = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
            else:
                with sessionmaker(engine)() as session:
                    orm = session.scalars(select(Note.tenant_id)).all()
                with engine.connect() as conn:
                    core = conn.execute(text("SELECT tenant_id FROM notes")).scalars().all()
        assert set(orm) == set(core) == {tenant}
        assert len(orm) == len(core) == ROWS_PER_TENANT[tenant]
    if driver == "asyncpg":
        await engine.dispose()


async def test_no_tenant_raises_and_without_tenant_sees_nothing(citus_app):
    engine = citus_app.engine("asyncpg", mode="set_local")
    with pytest.raises(NoTenantError):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT count(*) FROM notes"))
    async with without_tenant(), engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM notes")) == 0
        assert (await conn.execute(text("UPDATE notes SET body = 'x'"))).rowcount == 0
        await conn.rollback()
        with pytest.raises(DBAPIError, match="NULL in the partition column"):
            await conn.execute(text("INSERT INTO notes (body) VALUES ('orphan')"))
        await conn.rollback()
        with pytest.raises(DBAPIError, match="row-level security"):
            await conn.execute(text("INSERT INTO notes (tenant_id, body) VALUES (:t, 'x')"), {"t": A})
    await engine.dispose()


async def test_cross_tenant_updates_and_deletes_touch_nothing(citus_app):
    engine = citus_app.engine("asyncpg", mode="set_local")
    async with tenant_context(A), engine.begin() as conn:
        updated = await conn.execute(
            text("UPDATE notes SET body = 'hijacked' WHERE tenant_id = :t"), {"t": B}
        )
        deleted = await conn.execute(text("DELETE FROM notes WHERE tenant_id = :t"), {"t": B})
        await conn.rollback()
    await engine.dispose()
    assert (updated.rowcount, deleted.rowcount) == (0, 0)
    with citus_app.admin().connect() as conn:
        assert (
            conn.scalar(text("SELECT count(*) FROM notes WHERE tenant_id = :t"), {"t": B})
            == ROWS_PER_TENANT[B]
        )


@pytest.mark.parametrize("mode", ["set_local", "begin"])
async def test_concurrency_fuzz_never_crosses_tenants(citus_app, mode):
    """300 tasks for 5 tenants on a pool of 4: reads, writes, failing statements, cancellations."""
    engine = citus_app.engine("asyncpg", mode=mode)
    run = await fuzz(engine, TENANTS, tasks=300, seed=SEED, concurrency=20)
    await engine.dispose()

    assert run.foreign == []
    assert run.outcomes["read"] > 50 and run.outcomes["write"] > 20 and run.outcomes["statement_error"] > 20
    with citus_app.admin().begin() as conn:
        stored = take_fuzz_rows(conn)
    assert stored == {marker: tenant for tenant, marker in run.committed}
    print(dict(run.outcomes))


@pytest.mark.parametrize("citus", [True, False])
def test_the_migration_ddl_for_citus_is_accepted_and_reaches_the_shards(citus_app, citus):
    """The statements of ``enable_tenant_isolation(..., citus=True)`` work on a distributed table."""
    owner = create_engine(citus_app.url("owner"))
    with owner.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE ddl_probe (tenant_id uuid NOT NULL, id bigint NOT NULL)")
        create_distributed_table(conn, "ddl_probe")
    try:
        if not citus:
            with owner.begin() as conn, pytest.raises(DBAPIError, match="non-SELECT command in SubLink"):
                for statement in ddl.enable_statements("ddl_probe", citus=False):
                    conn.execute(statement)
            return
        with owner.begin() as conn:
            for statement in ddl.enable_statements("ddl_probe", citus=True):
                conn.execute(statement)
        worker = create_engine(citus_app.cluster.worker_url(0))
        with worker.connect() as conn:
            conn.exec_driver_sql("SET citus.override_table_visibility = off")
            shards = conn.execute(
                text(
                    "SELECT c.relrowsecurity AND c.relforcerowsecurity, p.polname FROM pg_class c "
                    "LEFT JOIN pg_policy p ON p.polrelid = c.oid "
                    "WHERE c.relkind = 'r' AND c.relname ~ '^ddl_probe_[0-9]+$'"
                )
            ).all()
        worker.dispose()
        assert shards and set(shards) == {(True, ddl.POLICY_NAME)}
    finally:
        with owner.begin() as conn:
            conn.exec_driver_sql("DROP TABLE ddl_probe")
        owner.dispose()
