"""Alembic operations and autogenerate for Citus, on a real coordinator with two workers."""

from __future__ import annotations

import io
import uuid

import pytest
import sqlalchemy
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from alembic.operations import MigrateOperation, Operations
from alembic.operations.ops import MigrationScript
from sqlalchemy import (
    BigInteger,
    Connection,
    ForeignKeyConstraint,
    MetaData,
    Text,
    create_engine,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pgtenancy.alembic  # noqa: F401 - registers the operations on ``op``
from pgtenancy import TenancyError, tenant_column, tenant_context
from pgtenancy.alembic import (
    CreateReferenceTableOp,
    DistributeTenantTableOp,
    UndistributeTableOp,
)
from pgtenancy.catalog import SchemaMismatchError, table_policies
from pgtenancy.citus import CitusDistributionError, CitusNotAvailableError
from pgtenancy.ddl import POLICY_NAME
from tests.scaleout.schema import SHARD_COUNT

SCHEMA = "alembic_citus"
A, B = uuid.UUID(int=0xA1), uuid.UUID(int=0xB2)
UNWRAPPED = "(tenant_id = (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::uuid)"


def operations(conn: Connection) -> Operations:
    return Operations(MigrationContext.configure(conn))


def tables(conn: Connection, *names: str) -> None:
    for name in names:
        conn.exec_driver_sql(f"CREATE TABLE {name} (tenant_id uuid NOT NULL, id bigint NOT NULL, body text)")


def held(conn: Connection, name: str) -> tuple[str, str, int] | None:
    """(type, distribution column, co-location id) from ``citus_tables``; None for a plain table."""
    row = conn.execute(
        text(
            "SELECT citus_table_type, distribution_column, colocation_id FROM citus_tables "
            "WHERE table_name = CAST(:t AS regclass)"
        ),
        {"t": SCHEMA + "." + name},
    ).one_or_none()
    return None if row is None else tuple(row)


def twice(op: Operations, operation: MigrateOperation) -> None:
    op.invoke(operation)
    op.invoke(operation)


def test_distribute_runs_twice_and_its_reverse_leaves_a_plain_table(owner):
    tables(owner, "parents", "children")
    owner.exec_driver_sql(
        "INSERT INTO parents VALUES (gen_random_uuid(), 1, 'a'), (gen_random_uuid(), 2, 'b')"
    )
    op = operations(owner)
    for _ in range(2):
        op.distribute_tenant_table("parents", schema=SCHEMA)
        op.distribute_tenant_table("children", schema=SCHEMA, colocate_with="parents")
    parent, child = held(owner, "parents"), held(owner, "children")
    assert parent is not None and parent[:2] == ("distributed", "tenant_id")
    assert child == parent
    shards = owner.scalar(
        text("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = CAST(:t AS regclass)"),
        {"t": SCHEMA + ".parents"},
    )
    assert shards == SHARD_COUNT

    downgrade = [
        DistributeTenantTableOp("children", schema=SCHEMA, colocate_with="parents").reverse(),
        DistributeTenantTableOp("parents", schema=SCHEMA).reverse(),
    ]
    for undo in downgrade:
        assert isinstance(undo, UndistributeTableOp)
        twice(op, undo)
    assert held(owner, "parents") is None and held(owner, "children") is None
    assert owner.scalar(text("SELECT count(*) FROM parents")) == 2  # the rows came back to the coordinator

    redo = downgrade[0].reverse()  # the downgrade carries what the upgrade did
    assert isinstance(redo, DistributeTenantTableOp)
    assert (redo.table, redo.column, redo.schema, redo.colocate_with) == (
        "children",
        "tenant_id",
        SCHEMA,
        "parents",
    )


def test_reference_table_runs_twice_and_its_reverse_leaves_a_plain_table(owner):
    owner.exec_driver_sql("CREATE TABLE plans (id smallint PRIMARY KEY, name text)")
    op = operations(owner)
    for _ in range(2):
        op.create_reference_table("plans", schema=SCHEMA)
    assert held(owner, "plans") == ("reference", "<none>", held(owner, "plans")[2])
    undo = CreateReferenceTableOp("plans", schema=SCHEMA).reverse()
    assert isinstance(undo, UndistributeTableOp) and undo.reference
    twice(op, undo)
    assert held(owner, "plans") is None
    assert isinstance(undo.reverse(), CreateReferenceTableOp)


def test_enable_isolation_on_a_distributed_table_is_unwrapped_and_reaches_the_shards(citus_app, owner):
    """No ``citus=True`` given: the operation sees Citus and writes the form it accepts."""
    tables(owner, "ledger")
    op = operations(owner)
    op.distribute_tenant_table("ledger", schema=SCHEMA)
    for _ in range(2):
        op.enable_tenant_isolation("ledger", schema=SCHEMA)
    op.grant_tenant_access(citus_app.roles.app, "ledger", schema=SCHEMA)
    (policy,) = table_policies(owner, "ledger", SCHEMA)
    assert (policy.name, policy.using, policy.with_check) == (POLICY_NAME, UNWRAPPED, UNWRAPPED)

    for index in range(len(citus_app.cluster.workers)):
        worker = create_engine(citus_app.cluster.worker_url(index))
        with worker.connect() as conn:
            conn.exec_driver_sql("SET citus.override_table_visibility = off")
            shards = conn.execute(
                text(
                    "SELECT c.relrowsecurity AND c.relforcerowsecurity, p.polname, "
                    "pg_get_expr(p.polqual, p.polrelid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = :schema "
                    "LEFT JOIN pg_policy p ON p.polrelid = c.oid "
                    "WHERE c.relkind = 'r' AND c.relname ~ '^ledger_[0-9]+$'"
                ),
                {"schema": SCHEMA},
            ).all()
        worker.dispose()
        assert shards and {(forced, name) for forced, name, _ in shards} == {(True, POLICY_NAME)}
        assert all("SELECT" not in expression for _, _, expression in shards)

    admin = citus_app.admin()
    with admin.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {SCHEMA}.ledger SELECT :t, g, 'x' FROM generate_series(1, :n) g"),
            [{"t": A, "n": 30}, {"t": B, "n": 20}],
        )
    engine = citus_app.engine("psycopg", mode="set_local")
    with tenant_context(B), engine.connect() as conn:
        seen = conn.execute(text(f"SELECT tenant_id, count(*) FROM {SCHEMA}.ledger GROUP BY 1")).all()
    assert seen == [(B, 20)]


def test_bad_input_fails_before_any_ddl(owner):
    tables(owner, "things")
    op = operations(owner)
    with pytest.raises(SchemaMismatchError, match="no column 'org_id'"):
        op.distribute_tenant_table("things", "org_id", schema=SCHEMA)
    with pytest.raises(SchemaMismatchError, match="does not exist"):
        op.distribute_tenant_table("missing", schema=SCHEMA)
    with pytest.raises(TenancyError, match="colocate_with"):
        op.undistribute_table("things", schema=SCHEMA, colocate_with="x", reference=True)
    assert held(owner, "things") is None

    owner.exec_driver_sql(  # a policy Citus cannot distribute, written by hand
        "CREATE POLICY by_hand ON things "
        "USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))"
    )
    with pytest.raises(SchemaMismatchError, match="citus=True"):
        op.distribute_tenant_table("things", schema=SCHEMA)
    assert held(owner, "things") is None
    owner.exec_driver_sql("DROP POLICY by_hand ON things")

    op.distribute_tenant_table("things", "id", schema=SCHEMA)
    with pytest.raises(CitusDistributionError, match=r"distributed by 'id'.*undistribute_table"):
        op.distribute_tenant_table("things", schema=SCHEMA)
    with pytest.raises(CitusDistributionError, match="already a distributed table"):
        op.create_reference_table("things", schema=SCHEMA)
    assert held(owner, "things")[:2] == ("distributed", "id")


def offline(*operations_to_run: MigrateOperation) -> str:
    """The ``--sql`` script of the operations, as Alembic writes it (no literal_binds option needed)."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer}
    )
    op = Operations(context)
    for operation in operations_to_run:
        op.invoke(operation)
    return buffer.getvalue()


def test_the_offline_script_runs_twice_on_the_cluster(owner):
    tables(owner, "orders", "lines")
    owner.exec_driver_sql("CREATE TABLE currencies (code text PRIMARY KEY)")
    upgrade = [
        DistributeTenantTableOp("orders", schema=SCHEMA),
        DistributeTenantTableOp("lines", schema=SCHEMA, colocate_with="orders"),
        CreateReferenceTableOp("currencies", schema=SCHEMA),
    ]
    script = offline(*upgrade)
    assert "SELECT create_distributed_table(CAST('alembic_citus.orders' AS regclass), 'tenant_id'" in script
    assert "colocate_with => 'alembic_citus.orders'" in script
    assert ":table" not in script
    owner.exec_driver_sql(script)
    owner.exec_driver_sql(script)
    orders, lines = held(owner, "orders"), held(owner, "lines")
    assert orders is not None and orders[:2] == ("distributed", "tenant_id") and lines == orders
    assert held(owner, "currencies")[0] == "reference"

    downgrade = offline(*(operation.reverse() for operation in reversed(upgrade)))
    assert downgrade.count("SELECT undistribute_table(") == 3
    owner.exec_driver_sql(downgrade)
    owner.exec_driver_sql(downgrade)
    assert [held(owner, name) for name in ("orders", "lines", "currencies")] == [None, None, None]


def test_a_database_without_citus_gets_a_clear_error_before_any_ddl(pgtenancy_owner_engine):
    with pgtenancy_owner_engine.connect() as conn:
        op = operations(conn)
        for call in (
            lambda: op.distribute_tenant_table("notes"),
            lambda: op.create_reference_table("notes"),
            lambda: op.undistribute_table("notes"),
        ):
            with pytest.raises(CitusNotAvailableError, match="CREATE EXTENSION citus") as caught:
                call()
            assert isinstance(caught.value, TenancyError)
        conn.exec_driver_sql("CREATE TABLE plain_items (tenant_id uuid NOT NULL)")
        op.enable_tenant_isolation("plain_items")
        (policy,) = table_policies(conn, "plain_items")
        assert "SELECT" in (policy.using or "")  # without Citus the initPlan form stays
        conn.rollback()


# ----------------------------------------------------------------------------- autogenerate


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Account(Base):
    __tablename__ = "accounts"

    tenant_id: Mapped[uuid.UUID] = tenant_column(primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "account_id"], [f"{SCHEMA}.accounts.tenant_id", f"{SCHEMA}.accounts.id"]
        ),
    )

    tenant_id: Mapped[uuid.UUID] = tenant_column(primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account_id: Mapped[int] = mapped_column(BigInteger)


def autogenerate(conn: Connection) -> MigrationScript:
    """What ``alembic revision --autogenerate`` proposes for the models, looking at the test schema only."""
    context = MigrationContext.configure(
        conn,
        opts={
            "include_schemas": True,
            "include_name": lambda name, kind, parent: kind != "schema" or name == SCHEMA,
        },
    )
    return produce_migrations(context, Base.metadata)


def test_autogenerate_distributes_the_tenant_tables_then_finds_nothing(citus_app, owner):
    migrator = create_engine(citus_app.url("owner"))
    with migrator.connect() as conn:  # autogenerate runs in a transaction, as env.py sets it up
        script = autogenerate(conn)
    code = "\n".join(line.strip() for line in render_python_code(script.upgrade_ops).splitlines())
    calls = [line.split(",", 1)[0] for line in code.splitlines() if line.startswith("op.")]
    assert calls == [
        "op.create_table('accounts'",
        "op.create_table('invoices'",
        "op.enable_tenant_isolation('accounts'",
        "op.distribute_tenant_table('accounts'",
        "op.enable_tenant_isolation('invoices'",
        "op.distribute_tenant_table('invoices'",
    ]
    assert "op.enable_tenant_isolation('accounts', schema='alembic_citus', citus=True)" in code
    assert "op.distribute_tenant_table('accounts', schema='alembic_citus')" in code

    with migrator.begin() as conn:  # the revision's code, in one transaction as Alembic runs it
        exec(code, {"op": operations(conn), "sa": sqlalchemy, "postgresql": postgresql})  # noqa: S102
    assert held(owner, "accounts")[:2] == held(owner, "invoices")[:2] == ("distributed", "tenant_id")
    assert held(owner, "accounts")[2] == held(owner, "invoices")[2]
    (policy,) = table_policies(owner, "invoices", SCHEMA)
    assert policy.using == UNWRAPPED

    with migrator.connect() as conn:
        second = autogenerate(conn).upgrade_ops
    migrator.dispose()
    assert second.is_empty(), render_python_code(second)  # a second autogenerate is empty


def test_autogenerate_proposes_nothing_about_citus_without_it(pgtenancy_owner_engine):
    with pgtenancy_owner_engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
        code = render_python_code(autogenerate(conn).upgrade_ops)
        conn.rollback()
    assert "op.enable_tenant_isolation('accounts', schema='alembic_citus')" in code
    assert "distribute" not in code and "citus" not in code.replace("alembic_citus", "")
