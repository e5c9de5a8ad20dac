"""P2 and P4: the cost of the RLS policy itself, and of many tenants, on a million rows."""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import Connection, TextClause, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.harness import Comparison, compare, query_work
from pgtenancy import instrument
from pgtenancy.testing.database import TestDatabase, TestRoles

TENANTS = 1_000
ROWS = 1_000_000
MANY_TENANTS = 100_000
CUSTOMERS_PER_TENANT = 100
WRAPPED = "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::bigint)"
UNWRAPPED = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::bigint"

# name -> (query under RLS, the same query with an explicit tenant filter and no RLS)
QUERIES: dict[str, tuple[str, str]] = {
    "count": ("SELECT count(*) FROM {o}", "SELECT count(*) FROM {o} WHERE tenant_id = :t"),
    "point select": (
        "SELECT * FROM {o} WHERE id = :id",
        "SELECT * FROM {o} WHERE tenant_id = :t AND id = :id",
    ),
    "range scan": (
        "SELECT sum(amount) FROM {o} WHERE created BETWEEN :a AND :a + 30",
        "SELECT sum(amount) FROM {o} WHERE tenant_id = :t AND created BETWEEN :a AND :a + 30",
    ),
    "join": (
        "SELECT c.name, sum(o.amount) FROM {o} o JOIN {c} c ON c.tenant_id = o.tenant_id "
        "AND c.id = o.customer_id WHERE o.created BETWEEN :a AND :a + 30 GROUP BY c.name",
        "SELECT c.name, sum(o.amount) FROM {o} o JOIN {c} c ON c.tenant_id = o.tenant_id "
        "AND c.id = o.customer_id WHERE o.tenant_id = :t AND c.tenant_id = :t "
        "AND o.created BETWEEN :a AND :a + 30 GROUP BY c.name",
    ),
}


def _table(
    conn: Connection, roles: TestRoles, name: str, columns: str, fill: TextClause, policy: str
) -> None:
    """A tenant table filled by ``fill``, RLS forced, readable by the app role (trusted constants only)."""
    app = conn.dialect.identifier_preparer.quote(roles.app)
    conn.exec_driver_sql("CREATE TABLE " + name + " (" + columns + ")")
    conn.execute(fill, {k: v for k, v in FILL_PARAMS.items() if ":" + k in fill.text})
    for statement in (
        "ALTER TABLE " + name + " ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE " + name + " FORCE ROW LEVEL SECURITY",
        "CREATE POLICY tenant_isolation ON " + name + " USING (" + policy + ")",
        "GRANT SELECT ON " + name + " TO " + app,
    ):
        conn.exec_driver_sql(statement)


FILL_PARAMS = {
    "tenants": TENANTS,
    "per_tenant": ROWS // TENANTS,
    "customers": CUSTOMERS_PER_TENANT - 1,
    "rows": ROWS,
    "many": MANY_TENANTS,
}
ORDERS = "tenant_id bigint NOT NULL, id bigint NOT NULL, customer_id bigint NOT NULL, amount int, created int"
CUSTOMERS = "tenant_id bigint NOT NULL, id bigint NOT NULL, name text"
ORDER_ROWS = (
    "SELECT t, t * 100000 + r, r % 100, (r * 7919) % 1000, r % 365 "
    "FROM generate_series(1, :tenants) t, generate_series(1, :per_tenant) r"
)
CUSTOMER_ROWS = (
    "SELECT t, r, 'customer ' || r FROM generate_series(1, :tenants) t, generate_series(0, :customers) r"
)
SPREAD_ROWS = (
    "SELECT g % :many + 1, g, g % 100, (g::bigint * 7919) % 1000, g % 365 FROM generate_series(1, :rows) g"
)


def schema(conn: Connection, roles: TestRoles) -> None:
    """Orders and customers (wrapped and unwrapped policies) and orders spread over 100,000 tenants."""
    for suffix, policy in (("", WRAPPED), ("_unwrapped", UNWRAPPED)):
        _table(
            conn,
            roles,
            "orders" + suffix,
            ORDERS,
            text("INSERT INTO orders" + suffix + " " + ORDER_ROWS),
            policy,
        )
        _table(
            conn,
            roles,
            "customers" + suffix,
            CUSTOMERS,
            text("INSERT INTO customers" + suffix + " " + CUSTOMER_ROWS),
            policy,
        )
    _table(conn, roles, "orders_spread", ORDERS, text("INSERT INTO orders_spread " + SPREAD_ROWS), WRAPPED)
    for table in ("orders", "orders_unwrapped", "orders_spread"):
        conn.exec_driver_sql("ALTER TABLE " + table + " ADD PRIMARY KEY (tenant_id, id)")
        conn.exec_driver_sql("CREATE INDEX ON " + table + " (tenant_id, created)")
        conn.exec_driver_sql("ANALYZE " + table)
    for table in ("customers", "customers_unwrapped"):
        conn.exec_driver_sql("ALTER TABLE " + table + " ADD PRIMARY KEY (tenant_id, id)")
        conn.exec_driver_sql("ANALYZE " + table)


def _bypass_role(database: TestDatabase) -> str:
    """A BYPASSRLS login role for the no-RLS baseline: the same tables, the policy not applied."""
    name = database.roles.app + "_bypass"
    admin = create_engine(database.url("admin"), isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS " + quoted)
        conn.exec_driver_sql("CREATE ROLE " + quoted + " LOGIN BYPASSRLS IN ROLE " + database.roles.app)
    admin.dispose()
    return name


def _orders_row(rng: random.Random) -> dict[str, int]:
    """A random tenant of ``orders``, one of its order ids and a start day."""
    tenant = rng.randrange(1, TENANTS + 1)
    return {
        "t": tenant,
        "id": tenant * 100000 + rng.randrange(1, ROWS // TENANTS + 1),
        "a": rng.randrange(300),
    }


def _spread_row(rng: random.Random) -> dict[str, int]:
    """A random row of ``orders_spread`` (row g belongs to tenant g % MANY_TENANTS + 1)."""
    row = rng.randrange(1, ROWS + 1)
    return {"t": row % MANY_TENANTS + 1, "id": row}


async def run(database: TestDatabase, *, rounds: int, seconds: float) -> list[Comparison]:
    """P2 (RLS / explicit filter, wrapped and unwrapped policies) and P4 (100k / 1k tenants)."""
    bypass = _bypass_role(database)
    url = database.url("app", drivername="postgresql+asyncpg")
    options: dict[str, Any] = {"pool_size": 4, "max_overflow": 0}
    tenant_engine = instrument(create_async_engine(url, **options), key_type="int")
    # the baseline binds the tenant too (same round trips), as a BYPASSRLS role with an explicit
    # filter: the ratio is the policy's own cost (P1 measures the binding's)
    plain_engine = instrument(
        create_async_engine(url.set(username=bypass), **options), key_type="int", verify_role=False
    )
    results = []
    try:
        for suffix, label in (("", "P2"), ("_unwrapped", "P2 unwrapped policy")):
            for name, (rls_sql, explicit_sql) in QUERIES.items():
                tables = {"o": "orders" + suffix, "c": "customers" + suffix}
                explicit = query_work(plain_engine, text(explicit_sql.format(**tables)), True, _orders_row)
                rls = query_work(tenant_engine, text(rls_sql.format(**tables)), True, _orders_row)
                results.append(
                    await compare(
                        f"{label} {name}: RLS / explicit filter",
                        explicit,
                        rls,
                        rounds=rounds,
                        tasks=4,
                        seconds=seconds,
                    )
                )
        few = query_work(tenant_engine, text("SELECT * FROM orders WHERE id = :id"), True, _orders_row)
        many = query_work(
            tenant_engine, text("SELECT * FROM orders_spread WHERE id = :id"), True, _spread_row
        )
        results.append(
            await compare(
                "P4 point select throughput: 100k tenants / 1k tenants",
                few,
                many,
                rounds=rounds,
                tasks=4,
                seconds=seconds,
            )
        )
    finally:
        await tenant_engine.dispose()
        await plain_engine.dispose()
    return results
