"""The FastAPI application: middleware, routes, the worker and the answers to refused writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from pgtenancy import without_tenant
from pgtenancy.asgi import FASTAPI_DOCS, JWTClaimResolver, PathResolver, TenantMiddleware
from pgtenancy.jobs import detached
from saas import admin, api
from saas.auth import VerifiedClaims, membership_check, subject
from saas.database import Database
from saas.settings import Settings
from saas.signup import sign_up
from saas.worker import Worker

__all__ = ["create_app"]

_RLS_VIOLATION = "42501"  # insufficient_privilege: a row that row-level security refuses


class SignUpIn(BaseModel):
    organization: str = Field(min_length=1, max_length=200)


def create_app(settings: Settings) -> FastAPI:
    """The app on ``settings``' databases; the worker runs while the app does (its lifespan)."""
    database = Database.connect(settings)
    worker = Worker(database.engine, signing_key=settings.job_signing_key)
    tokens = JWTClaimResolver(
        key=settings.jwt_key, algorithms=settings.jwt_algorithms, audience=settings.jwt_audience
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with detached():  # the worker's loop inherits no binding
            running = asyncio.create_task(worker.run())
        yield
        running.cancel()
        await database.dispose()

    app = FastAPI(title="pgtenancy SaaS example", lifespan=lifespan)
    app.state.database, app.state.worker, app.state.tokens = database, worker, tokens
    app.add_middleware(
        TenantMiddleware,
        resolver=PathResolver("/orgs/{tenant}"),  # the organization in the path ...
        principal=tokens.verify,  # ... acted for by the token's user ...
        access_check=membership_check(database.sessions),  # ... who must be one of its members
        exempt_paths=[*FASTAPI_DOCS, "/health", "/signup", "/admin/"],
    )
    app.include_router(api.router)
    app.include_router(admin.router)

    @app.post("/signup", status_code=201)
    async def signup(body: SignUpIn, claims: VerifiedClaims) -> dict[str, Any]:
        """A new organization, owned by the token's user (created on first sign-up, email from the token)."""
        user, email = subject(claims), claims.get("email")
        if user is None or not isinstance(email, str):
            raise HTTPException(400, "the token needs a UUID sub and an email claim")
        tenant = await sign_up(
            database.engine, organization=body.organization, owner_id=user, owner_email=email
        )
        return {"id": tenant, "name": body.organization}

    @app.get("/health")
    async def health() -> dict[str, str]:
        async with without_tenant(), database.engine.connect() as conn:  # no tenant: sees no tenant rows
            await conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.exception_handler(IntegrityError)
    async def conflict(request: Request, error: IntegrityError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the row conflicts with existing data or references a missing row"}, 409
        )

    @app.exception_handler(DBAPIError)
    async def refused(request: Request, error: DBAPIError) -> JSONResponse:
        if getattr(error.orig, "sqlstate", None) == _RLS_VIOLATION:
            return JSONResponse({"detail": "row-level security refused the row"}, 403)
        raise error

    return app
