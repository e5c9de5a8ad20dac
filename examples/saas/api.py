"""The organization's API, under ``/orgs/{tenant_id}``: the middleware has bound that tenant (a member's).

No handler filters by tenant: row-level security returns and accepts only the bound tenant's rows, so
an id from another organization is simply not found.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from saas.auth import Claims, subject
from saas.database import Database
from saas.models import Comment, Membership, Project, Task
from saas.worker import Worker

__all__ = ["router"]

router = APIRouter(prefix="/orgs/{tenant_id}")


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    database: Database = request.app.state.database
    async with database.sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(_session)]


async def _member(session: Session, claims: Claims) -> Membership:
    """The caller's membership of the bound organization (the access check has made sure there is one)."""
    found = await session.scalar(select(Membership).where(Membership.user_id == subject(claims)))
    if found is None:
        raise HTTPException(403, "not a member of this organization")
    return found


Member = Annotated[Membership, Depends(_member)]


class MemberIn(BaseModel):
    user_id: uuid.UUID
    role: Literal["admin", "member"]


class NameIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class TitleIn(BaseModel):
    title: str = Field(min_length=1, max_length=500)


class BodyIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)


@router.get("")
async def organization(session: Session, member: Member) -> dict[str, Any]:
    """The organization's own row (through ``current_tenant()``) and the caller's role in it."""
    row = (await session.execute(text("SELECT id, name FROM current_tenant()"))).one()
    return {"id": row.id, "name": row.name, "role": member.role}


@router.get("/members")
async def list_members(session: Session) -> list[dict[str, Any]]:
    members = await session.scalars(select(Membership).order_by(Membership.user_id))
    return [{"user_id": m.user_id, "role": m.role} for m in members]


@router.post("/members", status_code=201)
async def add_member(body: MemberIn, session: Session, member: Member) -> dict[str, Any]:
    """Owners and admins add a signed-up user (unknown users are a 409) as an admin or a member."""
    if member.role not in ("owner", "admin"):
        raise HTTPException(403, "only owners and admins add members")
    session.add(Membership(user_id=body.user_id, role=body.role))
    await session.commit()
    return {"user_id": body.user_id, "role": body.role}


@router.get("/projects")
async def list_projects(session: Session) -> list[dict[str, Any]]:
    projects = await session.scalars(select(Project).order_by(Project.id))
    return [{"id": p.id, "name": p.name} for p in projects]


@router.post("/projects", status_code=201)
async def create_project(body: NameIn, session: Session) -> dict[str, Any]:
    project = Project(name=body.name)  # tenant_id: the database's default, the bound tenant
    session.add(project)
    await session.commit()
    return {"id": project.id, "name": project.name}


@router.get("/projects/{project_id}/tasks")
async def list_tasks(project_id: int, session: Session) -> list[dict[str, Any]]:
    tasks = await session.scalars(select(Task).where(Task.project_id == project_id).order_by(Task.id))
    return [{"id": t.id, "title": t.title, "done": t.done} for t in tasks]


@router.post("/projects/{project_id}/tasks", status_code=201)
async def create_task(project_id: int, body: TitleIn, session: Session) -> dict[str, Any]:
    """A task of one of this organization's projects (another's project id is a 409: no such project)."""
    task = Task(project_id=project_id, title=body.title)
    session.add(task)
    await session.commit()
    return {"id": task.id, "title": task.title, "done": task.done}


@router.post("/projects/{project_id}/complete", status_code=202)
async def complete_project(project_id: int, request: Request) -> dict[str, str]:
    """Queue a job that marks the project's tasks done; the worker runs it as this organization."""
    worker: Worker = request.app.state.worker
    return {"job_id": worker.enqueue("complete_project", project_id=project_id).id}


@router.get("/tasks/{task_id}/comments")
async def list_comments(task_id: int, session: Session) -> list[Comment]:
    found = select(Comment).where(col(Comment.task_id) == task_id).order_by(col(Comment.id))
    comments = await session.scalars(found)
    return list(comments)


@router.post("/tasks/{task_id}/comments", status_code=201)
async def add_comment(task_id: int, body: BodyIn, session: Session, member: Member) -> Comment:
    """A comment by the caller: the SQLModel object is the answer, with the ``tenant_id`` the database set."""
    comment = Comment(task_id=task_id, author_id=member.user_id, body=body.body)
    session.add(comment)
    await session.commit()
    await session.refresh(comment)
    return comment
