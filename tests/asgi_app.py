"""A small Starlette app over ``notes`` whose queries carry no tenant filter, and helpers to sign tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from pgtenancy import NoTenantError, current_tenant_id
from pgtenancy.asgi import TenantMiddleware

LIST_NOTES = text("SELECT tenant_id, body FROM notes ORDER BY id")  # deliberately no tenant filter
HS_SECRET = "a-test-secret-that-is-long-enough-for-hs256"


async def list_notes(engine: AsyncEngine) -> dict[str, Any]:
    """What the database shows the bound tenant: the distinct tenant ids seen and the row count."""
    async with engine.connect() as conn:
        rows = (await conn.execute(LIST_NOTES)).all()
    return {"tenants": sorted({str(row.tenant_id) for row in rows}), "count": len(rows)}


def make_app(engine: AsyncEngine, resolver: Any, **middleware_options: Any) -> Starlette:
    """The test app behind a ``TenantMiddleware``; ``app.state.events`` records the lifespan."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        events.append("startup" if current_tenant_id() is None else "startup with a tenant bound")
        yield {"engine": engine}
        events.append("shutdown")

    async def notes(request: Request) -> JSONResponse:
        seen = await list_notes(engine)
        return JSONResponse({"state": request.state.tenant_id, "bound": current_tenant_id(), **seen})

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[str]:
            for _ in range(3):
                yield json.dumps({"bound": current_tenant_id(), **await list_notes(engine)}) + "\n"

        return StreamingResponse(chunks(), media_type="application/x-ndjson")

    async def create_later(request: Request) -> JSONResponse:
        body = (await request.json())["body"]

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})

        return JSONResponse({"queued": body}, status_code=202, background=BackgroundTask(write))

    async def health(request: Request) -> JSONResponse:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            database = "reachable"
        except NoTenantError:
            database = "refused: no tenant"
        return JSONResponse({"bound": current_tenant_id(), "database": database})

    async def state_engine(request: Request) -> JSONResponse:
        return JSONResponse({"lifespan_state_kept": request.state.engine is engine})

    async def notes_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        async for _message in websocket.iter_text():
            await websocket.send_json({"bound": current_tenant_id(), **await list_notes(engine)})

    app = Starlette(
        routes=[
            Route("/notes", notes),
            Route("/tenants/{tenant}/notes", notes),
            Route("/stream", stream),
            Route("/later", create_later, methods=["POST"]),
            Route("/health", health),
            Route("/public/health", health),
            Route("/state", state_engine),
            WebSocketRoute("/ws", notes_socket),
        ],
        middleware=[Middleware(TenantMiddleware, resolver=resolver, **middleware_options)],
        lifespan=lifespan,
    )
    app.state.events = events
    return app


def rsa_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(tenant: object, *, ttl: float = 300, **extra: Any) -> dict[str, Any]:
    """Token claims naming ``tenant``, expiring ``ttl`` seconds from now (negative: already expired)."""
    now = int(time.time())
    return {"sub": "user-1", "tenant_id": str(tenant), "iat": now, "exp": now + int(ttl), **extra}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: Mapping[str, Any], alg: str = "none") -> str:
    """A token with an empty signature, as an attacker would write it by hand."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return header + "." + _b64(json.dumps(payload).encode()) + "."


def hmac_token(payload: Mapping[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """An HS256 token signed by hand with any bytes as the secret (PyJWT refuses a PEM as secret)."""
    signing_input = (
        _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + _b64(json.dumps(payload).encode())
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def rs_token(payload: Mapping[str, Any], private_key: rsa.RSAPrivateKey, **headers: Any) -> str:
    return jwt.encode(dict(payload), private_key, algorithm="RS256", headers=headers or None)


def hs_token(payload: Mapping[str, Any], secret: str = HS_SECRET) -> str:
    return jwt.encode(dict(payload), secret, algorithm="HS256")
