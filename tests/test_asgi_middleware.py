"""TenantMiddleware against the real database: every request and WebSocket sees only its tenant's rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from pgtenancy import NoTenantError, current_tenant_id, tenant_context
from pgtenancy.asgi import (
    PROBLEM_MEDIA_TYPE,
    WS_POLICY_VIOLATION,
    HeaderResolver,
    JWTClaimResolver,
    PathResolver,
    ScopeResolver,
    SubdomainResolver,
    TenantMiddleware,
    get_tenant_id,
)
from pgtenancy.errors import ConfigurationError
from tests.asgi_app import HS_SECRET, claims, hs_token, list_notes, make_app
from tests.conftest import ROWS_PER_TENANT, TENANTS

pytestmark = pytest.mark.usefixtures("seeded")


def client_for(app: Any, host: str = "testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


def assert_sees_only(body: dict[str, Any], tenant: uuid.UUID) -> None:
    assert body["tenants"] == [str(tenant)]
    assert body["count"] == ROWS_PER_TENANT[tenant]


@pytest.fixture
async def engine(pgtenancy_engine_factory: Any) -> AsyncIterator[Any]:
    """An instrumented asyncpg engine as the app role, with a pool of 4 and no overflow."""
    engine = pgtenancy_engine_factory("asyncpg")
    yield engine
    await engine.dispose()


async def test_runs_as_a_role_that_cannot_bypass_rls(engine: Any) -> None:
    async with tenant_context(TENANTS[0]), engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            )
        ).one()
    assert tuple(row) == (False, False)


async def test_200_concurrent_requests_of_5_tenants_on_a_pool_of_4_see_only_their_rows(
    engine: Any,
) -> None:
    app = make_app(engine, HeaderResolver())
    tenants = [TENANTS[n % len(TENANTS)] for n in range(200)]
    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(client.get("/notes", headers={"X-Tenant-ID": str(tenant)}) for tenant in tenants)
        )
    for tenant, response in zip(tenants, responses, strict=True):
        assert response.status_code == 200
        body = response.json()
        assert body["bound"] == body["state"] == str(tenant)
        assert_sees_only(body, tenant)


async def test_binding_is_undone_when_the_request_ends(engine: Any) -> None:
    app = make_app(engine, HeaderResolver(), exempt_paths=["/health"])
    async with client_for(app) as client:
        await client.get("/notes", headers={"X-Tenant-ID": str(TENANTS[0])})  # runs in this very task
        assert current_tenant_id() is None
        assert (await client.get("/health")).json()["bound"] is None


async def test_streaming_body_keeps_the_tenant_while_it_queries(engine: Any) -> None:
    app = make_app(engine, HeaderResolver())
    async with client_for(app) as client:
        for tenant in TENANTS[:3]:
            response = await client.get("/stream", headers={"X-Tenant-ID": str(tenant)})
            lines = [httpx.Response(200, content=line).json() for line in response.text.splitlines()]
            assert len(lines) == 3
            for line in lines:
                assert line["bound"] == str(tenant)
                assert_sees_only(line, tenant)


async def test_background_task_writes_under_the_bound_tenant(engine: Any, seeded: Any) -> None:
    tenant = uuid.uuid4()  # a tenant of its own, so the other tests' row counts stay put
    marker = "background " + uuid.uuid4().hex
    app = make_app(engine, HeaderResolver())
    async with client_for(app) as client:
        response = await client.post("/later", headers={"X-Tenant-ID": str(tenant)}, json={"body": marker})
    assert response.status_code == 202
    admin = create_engine(seeded.url("admin"))  # a superuser sees every tenant's rows
    try:
        with admin.connect() as conn:
            owners = (
                conn.execute(text("SELECT tenant_id FROM notes WHERE body = :b"), {"b": marker})
                .scalars()
                .all()
            )
    finally:
        admin.dispose()
    assert owners == [tenant]


def test_websocket_is_bound_for_its_whole_life(pgtenancy_engine_factory: Any) -> None:
    engine = pgtenancy_engine_factory("asyncpg")
    app = make_app(engine, HeaderResolver())
    first, second = TENANTS[1], TENANTS[2]
    with TestClient(app) as client:
        with (
            client.websocket_connect("/ws", headers={"X-Tenant-ID": str(first)}) as one,
            client.websocket_connect("/ws", headers={"X-Tenant-ID": str(second)}) as two,
        ):
            for _ in range(3):
                for socket, tenant in ((one, first), (two, second)):
                    socket.send_text("list")
                    message = socket.receive_json()
                    assert message["bound"] == str(tenant)
                    assert_sees_only(message, tenant)
        client.portal.call(engine.dispose)


def test_websocket_without_a_tenant_is_closed_with_1008_before_accept(pgtenancy_engine_factory: Any) -> None:
    app = make_app(pgtenancy_engine_factory("asyncpg"), HeaderResolver())
    with TestClient(app) as client:
        for headers in ({}, {"X-Tenant-ID": "not-a-uuid"}):
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect("/ws", headers=headers),
            ):
                pass
            assert refused.value.code == WS_POLICY_VIOLATION
            assert "not-a-uuid" not in refused.value.reason


def test_lifespan_events_reach_the_app_unbound_and_its_state_survives(pgtenancy_engine_factory: Any) -> None:
    app = make_app(pgtenancy_engine_factory("asyncpg"), HeaderResolver())
    with TestClient(app) as client:
        assert app.state.events == ["startup"]
        response = client.get("/state", headers={"X-Tenant-ID": str(TENANTS[0])})
        assert response.json() == {"lifespan_state_kept": True}
    assert app.state.events == ["startup", "shutdown"]


async def test_exempt_paths_run_with_no_tenant_bound(engine: Any) -> None:
    app = make_app(engine, HeaderResolver(), exempt_paths=["/health", "/public/"])
    async with client_for(app) as client:
        for path in ("/health", "/public/health"):
            response = await client.get(path, headers={"X-Tenant-ID": str(TENANTS[0])})
            assert response.json() == {"bound": None, "database": "refused: no tenant"}
        assert (await client.get("/healthz")).status_code == 400  # "/health" is not a prefix
        assert (await client.get("/public")).status_code == 400  # "/public/" matches what is below it
        assert (await client.get("/notes")).status_code == 400


@pytest.mark.parametrize(
    ("resolver", "url", "headers"),
    [
        (PathResolver("/tenants/{tenant}"), "http://testserver/tenants/{t}/notes", {}),
        (SubdomainResolver("example.com"), "http://{t}.example.com/notes", {}),
        (
            JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"]),
            "http://testserver/notes",
            {"Authorization": "Bearer {token}"},
        ),
    ],
    ids=["path", "subdomain", "jwt"],
)
async def test_each_resolver_binds_the_tenant_it_finds(
    engine: Any, resolver: Any, url: str, headers: Any
) -> None:
    app = make_app(engine, resolver)
    tenant = TENANTS[3]
    token = hs_token(claims(tenant))
    async with client_for(app) as client:
        response = await client.get(
            url.format(t=tenant), headers={k: v.format(token=token) for k, v in headers.items()}
        )
    assert response.status_code == 200
    assert_sees_only(response.json(), tenant)


async def test_first_resolver_with_an_answer_wins(engine: Any) -> None:
    app = make_app(engine, [HeaderResolver(), PathResolver("/tenants/{tenant}")])
    async with client_for(app) as client:
        by_header = await client.get(f"/tenants/{TENANTS[0]}/notes", headers={"X-Tenant-ID": str(TENANTS[1])})
        by_path = await client.get(f"/tenants/{TENANTS[0]}/notes")
    assert_sees_only(by_header.json(), TENANTS[1])
    assert_sees_only(by_path.json(), TENANTS[0])


# --- errors: status codes and problem documents (no database needed: the app is never reached) ---


async def unreachable(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the app must not run for a refused request")


class MembershipBackend(AuthenticationBackend):
    """Authenticates the ``X-User`` header; ``alice`` belongs to tenants 0 and 1."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("X-User")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


MEMBERS = {"alice": {str(TENANTS[0]), str(TENANTS[1])}}


async def is_member(user: SimpleUser, tenant: str) -> bool:
    return tenant in MEMBERS.get(user.username, set())


def guarded_app() -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": current_tenant_id()})

    return Starlette(
        routes=[Route("/whoami", whoami)],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=MembershipBackend()),
            Middleware(TenantMiddleware, resolver=HeaderResolver(), access_check=is_member),
        ],
    )


async def assert_problem(response: httpx.Response, status: int, detail: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    assert body["detail"] == detail
    return body


async def test_no_tenant_is_400() -> None:
    async with client_for(TenantMiddleware(unreachable, HeaderResolver())) as client:
        await assert_problem(await client.get("/"), 400, "the request does not name a tenant")


async def test_malformed_tenant_is_400_and_not_echoed() -> None:
    hostile = "<script>alert(1)</script>' OR 1=1 --"
    async with client_for(TenantMiddleware(unreachable, HeaderResolver())) as client:
        response = await client.get("/", headers={"X-Tenant-ID": hostile})
    await assert_problem(response, 400, "malformed tenant id")
    assert "script" not in response.text and "OR 1=1" not in response.text


async def test_malformed_id_for_int_key_type_is_400() -> None:
    middleware = TenantMiddleware(unreachable, HeaderResolver(), key_type="int")
    async with client_for(middleware) as client:
        await assert_problem(
            await client.get("/", headers={"X-Tenant-ID": "1e9"}), 400, "malformed tenant id"
        )


async def test_missing_credentials_is_401_with_a_bearer_challenge() -> None:
    middleware = TenantMiddleware(unreachable, JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"]))
    async with client_for(middleware) as client:
        response = await client.get("/")
    await assert_problem(response, 401, "credentials naming a tenant are required")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_expired_token_is_401() -> None:
    middleware = TenantMiddleware(unreachable, JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"]))
    token = hs_token(claims(TENANTS[0], ttl=-60))
    async with client_for(middleware) as client:
        response = await client.get("/", headers={"Authorization": f"Bearer {token}"})
    body = await assert_problem(response, 401, "the token has expired")
    assert token not in str(body)


async def test_access_check_allows_a_member_and_forbids_others() -> None:
    async with client_for(guarded_app()) as client:
        member = await client.get("/whoami", headers={"X-User": "alice", "X-Tenant-ID": str(TENANTS[1])})
        stranger = await client.get("/whoami", headers={"X-User": "alice", "X-Tenant-ID": str(TENANTS[2])})
        anonymous = await client.get("/whoami", headers={"X-Tenant-ID": str(TENANTS[1])})
    assert member.json() == {"tenant": str(TENANTS[1])}
    await assert_problem(stranger, 403, "not allowed to act for this tenant")
    await assert_problem(anonymous, 401, "authentication is required to act for a tenant")


async def test_access_check_with_jwt_claims_as_the_principal() -> None:
    tokens = JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"])
    middleware = TenantMiddleware(
        unreachable,
        HeaderResolver(),
        principal=tokens.verify,
        access_check=lambda principal, tenant: tenant in principal["tenants"],
    )
    token = hs_token(claims(TENANTS[0], tenants=[str(TENANTS[0])]))
    async with client_for(middleware) as client:
        response = await client.get(
            "/", headers={"X-Tenant-ID": str(TENANTS[4]), "Authorization": f"Bearer {token}"}
        )
    await assert_problem(response, 403, "not allowed to act for this tenant")


async def test_scope_resolver_reads_the_authenticated_principal() -> None:
    class TenantUser(SimpleUser):
        tenant_id = str(TENANTS[2])

    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
            return (AuthCredentials(), TenantUser("bob")) if conn.headers.get("X-User") else None

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"tenant": current_tenant_id()})

    app = Starlette(
        routes=[Route("/", whoami)],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=Backend()),
            Middleware(TenantMiddleware, resolver=ScopeResolver()),
        ],
    )
    async with client_for(app) as client:
        assert (await client.get("/", headers={"X-User": "bob"})).json() == {"tenant": str(TENANTS[2])}
        await assert_problem(await client.get("/"), 401, "credentials naming a tenant are required")


async def call_raw(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """Call ``app`` with hand-made raw headers (what a lax server could pass on) and collect what it sends."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": headers,
        "query_string": b"",
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-tenant-id", str(TENANTS[0]).encode() + b"\r\nX-Admin: 1")],
        [(b"x-tenant-id", str(TENANTS[0]).encode() + b"\n")],
        [(b"x-tenant-id", b"\x00" + str(TENANTS[0]).encode())],
        [(b"x-tenant-id", str(TENANTS[0]).encode()), (b"X-Tenant-ID", str(TENANTS[1]).encode())],
        [(b"x-tenant-id", b"a" * 10_000)],
    ],
    ids=["crlf", "lf", "nul", "conflicting-duplicates", "over-long"],
)
async def test_header_injection_attempts_are_400(headers: list[tuple[bytes, bytes]]) -> None:
    sent = await call_raw(TenantMiddleware(unreachable, HeaderResolver()), headers)
    assert sent[0]["status"] == 400
    assert b"X-Admin" not in sent[1]["body"] and b"aaaa" not in sent[1]["body"]


async def test_identical_duplicate_headers_are_accepted() -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((current_tenant_id(), scope["state"]["tenant_id"]))
        await JSONResponse({})(scope, receive, send)

    value = str(TENANTS[0]).upper().encode()
    sent = await call_raw(TenantMiddleware(app, HeaderResolver()), [(b"x-tenant-id", value)] * 2)
    assert sent[0]["status"] == 200
    assert seen == [(str(TENANTS[0]), str(TENANTS[0]))]  # canonical (lowercase) form


async def test_lifespan_and_unknown_scope_types_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    middleware = TenantMiddleware(app, HeaderResolver())
    for kind in ("lifespan", "custom"):
        scope: Scope = {"type": kind, "asgi": {"version": "3.0"}}
        await middleware(scope, unreachable, unreachable)
        assert seen[-1] is scope and scope == {"type": kind, "asgi": {"version": "3.0"}}


async def test_plain_sync_and_async_callables_compose_as_resolvers() -> None:
    async def from_query(scope: Scope) -> str | None:
        return scope["query_string"].decode().removeprefix("tenant=") or None

    async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"tenant": current_tenant_id()})(scope, receive, send)

    middleware = TenantMiddleware(whoami, [lambda scope: None, from_query], key_type="int")
    async with client_for(middleware) as client:
        assert (await client.get("/?tenant=0042")).json() == {"tenant": "42"}
        await assert_problem(await client.get("/"), 400, "the request does not name a tenant")


async def test_custom_error_answer_and_exempt_paths_below_the_root_path() -> None:
    async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"tenant": current_tenant_id()})(scope, receive, send)

    middleware = TenantMiddleware(
        whoami,
        HeaderResolver(),
        exempt_paths=["/health"],
        on_error=lambda scope, error: PlainTextResponse(error.detail, status_code=error.status),
    )
    transport = httpx.ASGITransport(app=middleware, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/api/health")).json() == {"tenant": None}
        refused = await client.get("/api/notes")
    assert (refused.status_code, refused.text) == (400, "the request does not name a tenant")


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        TenantMiddleware(unreachable, [])
    with pytest.raises(ConfigurationError):
        TenantMiddleware(unreachable, HeaderResolver(), exempt_paths=["health"])
    with pytest.raises(ConfigurationError):
        TenantMiddleware(unreachable, HeaderResolver(), key_type="email")


# --- FastAPI ---


async def test_fastapi_add_middleware_and_dependency(engine: Any) -> None:
    app = FastAPI()
    app.add_middleware(TenantMiddleware, resolver=HeaderResolver(), exempt_paths=["/docs", "/openapi.json"])

    @app.get("/notes")
    async def notes(tenant: Annotated[str, Depends(get_tenant_id)]) -> dict[str, Any]:
        return {"tenant": tenant, **await list_notes(engine)}

    @app.get("/sync")
    def in_threadpool(tenant: Annotated[str, Depends(get_tenant_id)]) -> dict[str, Any]:
        return {"tenant": tenant, "bound": current_tenant_id()}

    async with client_for(app) as client:
        for tenant in TENANTS[:2]:
            body = (await client.get("/notes", headers={"X-Tenant-ID": str(tenant)})).json()
            assert body["tenant"] == str(tenant)
            assert_sees_only(body, tenant)
        threaded = (await client.get("/sync", headers={"X-Tenant-ID": str(TENANTS[4])})).json()
        assert threaded == {"tenant": str(TENANTS[4]), "bound": str(TENANTS[4])}
        assert (await client.get("/openapi.json")).status_code == 200
        await assert_problem(await client.get("/notes"), 400, "the request does not name a tenant")


async def test_list_notes_outside_the_middleware_fails_closed(engine: Any) -> None:
    with pytest.raises(NoTenantError):
        await list_notes(engine)
