"""Who is calling (verified token claims) and whether they may act for the organization in the path."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pgtenancy import tenant_context
from pgtenancy.asgi import JWTClaimResolver, TenantResolutionError, get_jwt_claims
from saas.models import Membership

__all__ = ["Claims", "VerifiedClaims", "membership_check", "require_staff", "subject"]

Claims = Annotated[dict[str, Any], Depends(get_jwt_claims)]  # verified by the middleware for this request


def subject(claims: Mapping[str, Any]) -> uuid.UUID | None:
    """The user id of the token (its ``sub`` claim), or ``None`` when that is not a UUID: fail closed."""
    try:
        return uuid.UUID(str(claims.get("sub")))
    except ValueError:
        return None


def membership_check(
    sessions: async_sessionmaker[AsyncSession],
) -> Callable[[dict[str, Any], str], Awaitable[bool]]:
    """The middleware's access check: the token's user must be a member of the organization in the path.

    The membership is read with that organization bound, so row-level security shows this one tenant's
    memberships only: no query here can see another tenant's members, even by mistake.
    """

    async def is_member(claims: dict[str, Any], tenant: str) -> bool:
        user = subject(claims)
        if user is None:
            return False
        async with tenant_context(tenant), sessions() as session:
            role = await session.scalar(select(Membership.role).where(Membership.user_id == user))
        return role is not None

    return is_member


async def _verified(request: Request) -> dict[str, Any]:
    """The claims of the request's bearer token, for routes the middleware does not bind (401 without)."""
    tokens: JWTClaimResolver = request.app.state.tokens
    try:
        claims = await tokens.verify(request.scope)
    except TenantResolutionError as error:
        raise HTTPException(401, error.detail, headers={"WWW-Authenticate": "Bearer"}) from None
    if claims is None:
        raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return claims


VerifiedClaims = Annotated[dict[str, Any], Depends(_verified)]


async def require_staff(claims: VerifiedClaims) -> dict[str, Any]:
    """Admin routes: the token must carry ``"staff": true`` (set by your identity provider for staff)."""
    if claims.get("staff") is not True:
        raise HTTPException(403, "staff only")
    return claims
