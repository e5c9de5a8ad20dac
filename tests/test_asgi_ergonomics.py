"""What a FastAPI or Starlette user reaches for first: doc pages exempt, claims in handlers, clear 401s."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pgtenancy import NoTenantError, current_tenant_id, tenant_context
from pgtenancy.asgi import (
    FASTAPI_DOCS,
    HeaderResolver,
    JWTClaimResolver,
    TenantMiddleware,
    get_jwt_claims,
    jwt_claims,
)
from pgtenancy.errors import ConfigurationError
from tests.asgi_app import HS_SECRET, claims, hs_token
from tests.conftest import ROWS_PER_TENANT, TENANTS


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def whoami(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"tenant": current_tenant_id()})(scope, receive, send)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


# --- exempt paths ---


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/health", True),
        ("/health/", True),
        ("/healthz", False),
        ("/health/deep", False),
        ("/static/app.js", True),
        ("/static/", True),
        ("/static", False),
        ("/notes", False),
    ],
)
async def test_an_exact_entry_matches_with_or_without_a_trailing_slash_and_nothing_more(
    path: str, exempt: bool
) -> None:
    middleware = TenantMiddleware(whoami, HeaderResolver(), exempt_paths=["/health", "/static/"])
    async with client_for(middleware) as client:
        response = await client.get(path)
    assert (response.status_code, middleware.is_exempt(path)) == ((200, True) if exempt else (400, False))


async def test_fastapi_doc_pages_are_served_with_fastapi_docs_exempt() -> None:
    app = FastAPI()
    app.add_middleware(TenantMiddleware, resolver=HeaderResolver(), exempt_paths=[*FASTAPI_DOCS, "/health"])

    @app.get("/notes")
    async def notes() -> dict[str, Any]:
        return {"tenant": current_tenant_id()}

    async with client_for(app) as client:
        for path in FASTAPI_DOCS:
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/notes")).status_code == 400
        tenant = str(TENANTS[0])
        assert (await client.get("/notes", headers={"X-Tenant-ID": tenant})).json() == {"tenant": tenant}


# --- the verified claims in handlers ---


async def test_starlette_handlers_read_the_verified_claims() -> None:
    async def me(request: Request) -> JSONResponse:
        found = jwt_claims(request)
        return JSONResponse({"sub": found and found["sub"], "same": found is jwt_claims(request.scope)})

    app = Starlette(
        routes=[Route("/me", me)],
        middleware=[
            Middleware(TenantMiddleware, resolver=JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"]))
        ],
    )
    async with client_for(app) as client:
        response = await client.get("/me", headers=bearer(hs_token(claims(TENANTS[0]))))
    assert response.json() == {"sub": "user-1", "same": True}


async def test_fastapi_dependency_gives_the_claims_also_when_the_token_is_only_the_principal() -> None:
    tokens = JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"])
    app = FastAPI()
    app.add_middleware(
        TenantMiddleware,
        resolver=HeaderResolver(),
        principal=tokens.verify,
        access_check=lambda principal, tenant: tenant in principal["tenants"],
    )

    @app.get("/me")
    async def me(token: Annotated[dict[str, Any], Depends(get_jwt_claims)]) -> dict[str, Any]:
        return {"sub": token["sub"], "tenant": current_tenant_id()}

    tenant = str(TENANTS[1])
    token = hs_token(claims(tenant, tenants=[tenant]))
    async with client_for(app) as client:
        response = await client.get("/me", headers={"X-Tenant-ID": tenant, **bearer(token)})
    assert response.json() == {"sub": "user-1", "tenant": tenant}


async def test_the_claims_dependency_on_a_request_without_a_token_is_a_configuration_error() -> None:
    app = FastAPI()
    app.add_middleware(TenantMiddleware, resolver=HeaderResolver())

    @app.get("/me")
    async def me(token: Annotated[dict[str, Any], Depends(get_jwt_claims)]) -> dict[str, Any]:
        return token

    async with client_for(app) as client:
        with pytest.raises(ConfigurationError, match="JWTClaimResolver"):
            await client.get("/me", headers={"X-Tenant-ID": str(TENANTS[0])})


# --- refusals: logged with their reason, answered with fixed text ---


@pytest.mark.parametrize(
    ("resolver_options", "token_claims", "detail", "reason"),
    [
        ({"audience": "notes-api"}, {"aud": "billing-api"}, "invalid token", "InvalidAudienceError"),
        ({"issuer": "https://idp"}, {"iss": "https://evil"}, "invalid token", "InvalidIssuerError"),
        ({}, {"exp": 1}, "the token has expired", "ExpiredSignatureError"),
        ({"require": ("exp", "sub")}, {"sub": None}, "invalid token", "MissingRequiredClaimError (sub)"),
    ],
    ids=["aud", "iss", "exp", "missing-claim"],
)
async def test_a_refused_token_is_a_generic_401_and_a_log_line_saying_why(
    caplog: pytest.LogCaptureFixture,
    resolver_options: dict[str, Any],
    token_claims: dict[str, Any],
    detail: str,
    reason: str,
) -> None:
    payload = {
        key: value for key, value in {**claims(TENANTS[0]), **token_claims}.items() if value is not None
    }
    token = hs_token(payload)
    middleware = TenantMiddleware(
        whoami, JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"], **resolver_options)
    )
    with caplog.at_level(logging.WARNING, logger="pgtenancy.asgi"):
        async with client_for(middleware) as client:
            response = await client.get("/", headers=bearer(token))
    assert (response.status_code, response.json()["detail"]) == (401, detail)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("pgtenancy.asgi", "bearer token refused: " + reason)
    ]
    assert token not in caplog.text and token.split(".")[1] not in caplog.text


async def test_an_over_long_authorization_header_is_401(caplog: pytest.LogCaptureFixture) -> None:
    middleware = TenantMiddleware(whoami, JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"]))
    with caplog.at_level(logging.WARNING, logger="pgtenancy.asgi"):
        async with client_for(middleware) as client:
            response = await client.get("/", headers=bearer("x" * 10_000))
    assert (response.status_code, response.headers["www-authenticate"]) == (401, "Bearer")
    assert response.json()["detail"] == "malformed authorization header"
    assert "unusable Authorization header" in caplog.text


# --- the access check: canonical tenant ids, a dict principal ---


async def test_access_check_gets_the_canonical_tenant_so_claims_are_canonicalised_too() -> None:
    """The documented example: claims of any case match, as the check compares lowercase UUIDs."""
    seen: list[str] = []

    def is_member(principal: dict[str, Any], tenant: str) -> bool:
        seen.append(tenant)
        return tenant in {str(t).lower() for t in principal.get("tenants", ())}

    middleware = TenantMiddleware(
        whoami,
        HeaderResolver(),
        principal=JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"]).verify,
        access_check=is_member,
    )
    member = str(TENANTS[0]).upper()
    token = hs_token(claims(TENANTS[0], tenants=[member]))
    async with client_for(middleware) as client:
        allowed = await client.get("/", headers={"X-Tenant-ID": member, **bearer(token)})
        other = await client.get("/", headers={"X-Tenant-ID": str(TENANTS[1]).upper(), **bearer(token)})
        anonymous = await client.get("/", headers={"X-Tenant-ID": member})
    assert allowed.json() == {"tenant": str(TENANTS[0])}
    assert seen == [str(TENANTS[0]), str(TENANTS[1])]  # canonical: lowercase, whatever the client sent
    assert (other.status_code, anonymous.status_code) == (403, 401)


# --- binding the tenant in a FastAPI dependency ---


async def test_a_sync_dependency_that_binds_the_tenant_gets_errors_naming_the_async_form(
    seeded: Any, pgtenancy_engine_factory: Any
) -> None:
    """FastAPI enters and exits a sync generator dependency in thread-pool threads: the binding is lost."""
    engine = pgtenancy_engine_factory("asyncpg")
    app = FastAPI()

    def sync_tenant(x_tenant_id: Annotated[str, Header()]) -> Iterator[None]:
        with tenant_context(x_tenant_id):
            yield

    async def async_tenant(x_tenant_id: Annotated[str, Header()]) -> AsyncIterator[None]:
        async with tenant_context(x_tenant_id):
            yield

    async def count() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM notes"))).scalar_one())

    @app.get("/sync", dependencies=[Depends(sync_tenant)])
    async def with_sync_dependency() -> int:
        return await count()

    @app.get("/async", dependencies=[Depends(async_tenant)])
    async def with_async_dependency() -> int:
        return await count()

    headers = {"X-Tenant-ID": str(TENANTS[0])}
    async with client_for(app) as client:
        assert (await client.get("/async", headers=headers)).json() == ROWS_PER_TENANT[TENANTS[0]]
        with pytest.raises(
            RuntimeError, match=r"sync \(def\) generator dependency in FastAPI.*async def"
        ) as exited:
            await client.get("/sync", headers=headers)
    refused = exited.value.__context__
    assert isinstance(refused, NoTenantError)
    assert "a tenant_context entered in a sync (def) dependency does not reach the endpoint" in str(refused)
