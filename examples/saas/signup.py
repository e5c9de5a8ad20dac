"""Sign-up: a new organization and its first user, before any tenant exists to bind.

It runs on the app role's engine inside ``without_tenant()`` and calls the ``sign_up`` SECURITY DEFINER
function of the migrations, rather than using the admin engine. Sign-up is open to anyone with a valid
token, so it is the most exposed route of the app: on the admin engine a bug or an injection there would
run as a role that reads and writes every tenant. The function gives the app role exactly one more power,
creating a fresh tenant with its owner, and nothing else: the app role still cannot list, read or change
other tenants, ``tenants`` and ``users`` stay out of its reach, and the function's own writes pass row-level
security only for the tenant it has just made.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pgtenancy import without_tenant

__all__ = ["sign_up"]

_SIGN_UP = text("SELECT sign_up(:organization, :owner_id, :owner_email)")


async def sign_up(
    engine: AsyncEngine, *, organization: str, owner_id: uuid.UUID, owner_email: str
) -> uuid.UUID:
    """Create organization ``organization`` with ``owner_id`` as its owner; return the new tenant's id."""
    params = {"organization": organization, "owner_id": owner_id, "owner_email": owner_email}
    async with without_tenant(), engine.begin() as conn:  # on behalf of no tenant: RLS sees none
        tenant: uuid.UUID = (await conn.execute(_SIGN_UP, params)).scalar_one()
    return tenant
