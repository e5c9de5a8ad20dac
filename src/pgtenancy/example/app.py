"""The example Starlette application: its handlers run queries with no tenant filter at all.

Every request is bound to the tenant named in a verified JWT (``tenant_id`` claim); the
handlers list and create projects and tasks without ever writing ``WHERE tenant_id = ...``.
Row-level security keeps each tenant to its own rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pgtenancy import current_tenant_id, instrument, without_tenant
from pgtenancy.asgi import JWTClaimResolver, TenantMiddleware
from pgtenancy.example.models import KEY_TYPE, Project, Task

__all__ = ["create_app"]

_RLS_VIOLATION = "42501"  # insufficient_privilege: what PostgreSQL raises when WITH CHECK rejects a row


def create_app(database_url: str, *, jwt_key: str, jwt_algorithms: tuple[str, ...] = ("HS256",)) -> Starlette:
    """The example app on ``database_url`` (the app role), trusting tokens signed with ``jwt_key``."""
    engine = instrument(create_async_engine(database_url, pool_size=8), key_type=KEY_TYPE)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def list_projects(request: Request) -> JSONResponse:
        async with sessions() as session:  # no tenant filter: RLS returns this tenant's projects only
            projects = (await session.scalars(select(Project).order_by(Project.id))).all()
        return JSONResponse([{"id": p.id, "tenant_id": p.tenant_id, "name": p.name} for p in projects])

    async def create_project(request: Request) -> JSONResponse:
        body = await _json_object(request)
        project = Project(name=str(body.get("name", "")))
        if "tenant_id" in body:  # a client naming a tenant: the database checks it against the bound one
            project.tenant_id = body["tenant_id"]
        async with sessions() as session:
            session.add(project)
            await _commit(session)
        return JSONResponse({"id": project.id, "tenant_id": project.tenant_id, "name": project.name}, 201)

    async def list_tasks(request: Request) -> JSONResponse:
        async with sessions() as session:
            tasks = (await session.scalars(select(Task).order_by(Task.id))).all()
        return JSONResponse([{"id": t.id, "project_id": t.project_id, "title": t.title} for t in tasks])

    async def create_task(request: Request) -> JSONResponse:
        body = await _json_object(request)
        task = Task(project_id=body.get("project_id"), title=str(body.get("title", "")))
        async with sessions() as session:
            session.add(task)
            await _commit(session)
        return JSONResponse({"id": task.id, "project_id": task.project_id, "title": task.title}, 201)

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"tenant_id": current_tenant_id()})

    async def health(request: Request) -> JSONResponse:
        async with without_tenant(), engine.connect() as conn:  # no tenant: sees no tenant rows
            visible = (await conn.execute(text("SELECT count(*) FROM projects"))).scalar_one()
        return JSONResponse({"status": "ok", "visible_projects": visible})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    resolver = JWTClaimResolver("tenant_id", key=jwt_key, algorithms=jwt_algorithms)
    app = Starlette(
        routes=[
            Route("/projects", list_projects, methods=["GET"]),
            Route("/projects", create_project, methods=["POST"]),
            Route("/tasks", list_tasks, methods=["GET"]),
            Route("/tasks", create_task, methods=["POST"]),
            Route("/whoami", whoami),
            Route("/health", health),
        ],
        middleware=[
            Middleware(TenantMiddleware, resolver=resolver, key_type=KEY_TYPE, exempt_paths=("/health",))
        ],
        lifespan=lifespan,
    )
    app.state.engine = engine  # for callers that drive the app without its lifespan (tests, the demo)
    return app


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return body


async def _commit(session: AsyncSession) -> None:
    """Commit, answering rows the database refuses with 403 (RLS) or 409 (constraints) instead of 500."""
    try:
        await session.commit()
    except IntegrityError as error:
        raise HTTPException(
            409, "the row conflicts with existing data or references a missing row"
        ) from error
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _RLS_VIOLATION:
            raise HTTPException(403, "row-level security rejected a row for another tenant") from error
        raise
