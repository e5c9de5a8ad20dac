import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from pgtenancy import instrument, tenant_context

# connect as the application's role: NOSUPERUSER NOBYPASSRLS, owner of nothing
engine = instrument(create_async_engine(os.environ["DATABASE_URL"]))


async def list_invoices(tenant_id):
    async with tenant_context(tenant_id), engine.connect() as conn:
        # no WHERE tenant_id = ...: the RLS policy returns this tenant's rows only
        return (await conn.execute(text("SELECT body FROM invoices ORDER BY body"))).scalars().all()
