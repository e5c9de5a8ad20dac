"""P3: requests/s of a DB-backed Starlette endpoint, with ``TenantMiddleware`` vs binding in the handler.

``python -m benchmarks --only asgi``. Both apps run the same query (no tenant
filter, RLS does the work) on the same instrumented engine through ``httpx.ASGITransport`` in this
process, so the ratio isolates what the middleware adds on top of the handler binding the tenant
itself: an extra ASGI layer, strict header parsing, validation and the ``scope["state"]`` entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.harness import Comparison, compare
from pgtenancy import instrument, tenant_context, validate_tenant_id
from pgtenancy.asgi import HeaderResolver, TenantMiddleware
from pgtenancy.testing.database import TestDatabase, TestRoles

TENANTS = [uuid.UUID(int=0xB000 + n) for n in range(50)]
ROWS_PER_TENANT = 10
LIST_NOTES = text("SELECT id, body FROM notes ORDER BY id")  # no tenant filter: RLS scopes it
_POLICY = "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"


def schema(conn: Connection, roles: TestRoles) -> None:
    """A ``notes`` table isolated by RLS, as the migrations create it, with ROWS_PER_TENANT rows a tenant."""
    app_role = conn.dialect.identifier_preparer.quote(roles.app)
    conn.exec_driver_sql(
        "CREATE TABLE notes (id bigserial, tenant_id uuid NOT NULL, body text NOT NULL, "
        "PRIMARY KEY (tenant_id, id))"
    )
    conn.execute(
        text(
            "INSERT INTO notes (tenant_id, body) "
            "SELECT t, 'note ' || g FROM unnest(:tenants) t, generate_series(1, :n) g"
        ),
        {"tenants": TENANTS, "n": ROWS_PER_TENANT},
    )
    conn.exec_driver_sql("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
    conn.exec_driver_sql("ALTER TABLE notes FORCE ROW LEVEL SECURITY")
    conn.exec_driver_sql(
        "CREATE POLICY tenant_isolation ON notes USING (" + _POLICY + ") WITH CHECK (" + _POLICY + ")"
    )
    conn.exec_driver_sql("GRANT SELECT ON notes TO " + app_role)
    conn.exec_driver_sql("ANALYZE notes")


def _apps(engine: AsyncEngine) -> tuple[Starlette, Starlette]:
    """The same endpoint twice: binding its own tenant from the header, and behind ``TenantMiddleware``."""

    async def query() -> JSONResponse:
        async with engine.connect() as conn:
            rows = (await conn.execute(LIST_NOTES)).all()
        return JSONResponse([{"id": row.id, "body": row.body} for row in rows])

    async def self_bound(request: Request) -> JSONResponse:
        async with tenant_context(validate_tenant_id(request.headers["X-Tenant-ID"], "uuid")):
            return await query()

    async def middleware_bound(request: Request) -> JSONResponse:
        return await query()

    baseline = Starlette(routes=[Route("/notes", self_bound)])
    candidate = Starlette(
        routes=[Route("/notes", middleware_bound)],
        middleware=[Middleware(TenantMiddleware, resolver=HeaderResolver())],
    )
    return baseline, candidate


def _requests(client: httpx.AsyncClient) -> Callable[[int], Awaitable[None]]:
    async def work(i: int) -> None:
        tenant = TENANTS[i % len(TENANTS)]
        response = await client.get("/notes", headers={"X-Tenant-ID": str(tenant)})
        if response.status_code != 200 or len(response.json()) != ROWS_PER_TENANT:
            raise RuntimeError(f"unexpected answer {response.status_code} for tenant {tenant}")

    return work


async def run(database: TestDatabase, *, rounds: int, seconds: float) -> list[Comparison]:
    """P3: one instrumented asyncpg engine (pool of 8), 16 concurrent clients, both apps interleaved."""
    engine = create_async_engine(
        database.url("app", drivername="postgresql+asyncpg"), pool_size=8, max_overflow=0
    )
    instrument(engine)
    baseline_app, candidate_app = _apps(engine)
    transport = httpx.ASGITransport
    try:
        async with (
            httpx.AsyncClient(transport=transport(app=baseline_app), base_url="http://bench") as baseline,
            httpx.AsyncClient(transport=transport(app=candidate_app), base_url="http://bench") as candidate,
        ):
            result = await compare(
                "P3 list endpoint, asyncpg: TenantMiddleware / binding in the handler",
                _requests(baseline),
                _requests(candidate),
                rounds=rounds,
                tasks=16,
                seconds=seconds,
            )
    finally:
        await engine.dispose()
    result.unit = "requests/s"
    return [result]
