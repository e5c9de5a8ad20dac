"""Checking that the connected database role is one that row-level security actually binds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from pgtenancy.catalog.roles import CURRENT_ROLE_SQL
from pgtenancy.errors import UnsafeRoleError

__all__ = ["role_problems", "verify_dbapi_role", "verify_role"]


def role_problems(conn: Connection) -> list[str]:
    """Every reason the connection's current role escapes row-level security (empty when it is safe)."""
    return _problems(*conn.execute(text(CURRENT_ROLE_SQL)).one())


def _problems(
    name: str, superuser: bool, bypassrls: bool, unforced: list[str], memberships: list[str]
) -> list[str]:
    problems = []
    if superuser:
        problems.append(f"role {name!r} is a superuser")
    if bypassrls:
        problems.append(f"role {name!r} has BYPASSRLS")
    if unforced:
        problems.append(
            f"role {name!r} owns tables whose row level security is not forced: {', '.join(unforced)} "
            "(ALTER TABLE ... FORCE ROW LEVEL SECURITY, or connect as a role that does not own them)"
        )
    if memberships:
        problems.append(f"role {name!r} is a member of superuser/BYPASSRLS roles: {', '.join(memberships)}")
    return problems


def verify_role(conn: Connection) -> None:
    """Raise ``UnsafeRoleError`` unless row-level security binds the connection's current role."""
    _raise_if(role_problems(conn))


def verify_dbapi_role(dbapi_connection: Any) -> None:
    """``verify_role`` on a raw DBAPI connection (a pool ``connect`` hook), leaving no transaction open."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(CURRENT_ROLE_SQL)
        row = cursor.fetchone()
    finally:
        cursor.close()
        dbapi_connection.rollback()
    _raise_if(_problems(*row))


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise UnsafeRoleError(
            "refusing to run tenant queries: "
            + "; ".join(problems)
            + ". Connect as a NOSUPERUSER NOBYPASSRLS role that owns no isolated table, "
            "or pass verify_role=False only for an admin engine that never serves tenants."
        )
