"""Staff routes under ``/admin``: cross-tenant reports on the admin engine (a BYPASSRLS role).

These routes are exempt from the tenant middleware and guarded by the staff claim instead; they are the
only code that touches ``Database.admin``, and they only read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import text

from saas.auth import require_staff
from saas.database import Database

__all__ = ["router"]

router = APIRouter(prefix="/admin", dependencies=[Depends(require_staff)])

_TENANTS = text(
    """
    SELECT t.id, t.name, t.created_at,
           (SELECT count(*) FROM memberships m WHERE m.tenant_id = t.id) AS members,
           (SELECT count(*) FROM projects p WHERE p.tenant_id = t.id) AS projects,
           (SELECT count(*) FROM tasks k WHERE k.tenant_id = t.id AND NOT k.done) AS open_tasks
      FROM tenants t
     ORDER BY t.created_at, t.id
    """
)
_TOTALS = text(
    "SELECT (SELECT count(*) FROM tenants) AS tenants, (SELECT count(*) FROM users) AS users, "
    "(SELECT count(*) FROM tasks) AS tasks, (SELECT count(*) FROM tasks WHERE done) AS done_tasks"
)


@router.get("/tenants")
async def tenants(request: Request) -> list[dict[str, Any]]:
    """Every organization with its members, projects and open tasks."""
    database: Database = request.app.state.database
    async with database.admin.connect() as conn:
        return [dict(row) for row in (await conn.execute(_TENANTS)).mappings()]


@router.get("/report")
async def report(request: Request) -> dict[str, Any]:
    """Totals over every organization."""
    database: Database = request.app.state.database
    async with database.admin.connect() as conn:
        return dict((await conn.execute(_TOTALS)).mappings().one())
