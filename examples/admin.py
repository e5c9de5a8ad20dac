import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

# A separate engine for cross-tenant work (reports, support tools), connected as a BYPASSRLS role.
# It is never instrumented and never serves a tenant's request.
admin_engine = create_async_engine(os.environ["ADMIN_DATABASE_URL"])


async def invoices_per_tenant():
    async with admin_engine.connect() as conn:
        rows = await conn.execute(text("SELECT tenant_id, count(*) FROM invoices GROUP BY tenant_id"))
        return dict(rows.all())
