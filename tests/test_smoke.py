from sqlalchemy import text

from pgtenancy import tenant_context
from tests.conftest import ROWS_PER_TENANT, TENANTS


async def test_forgotten_filter_smoke(seeded, pgtenancy_engine_factory):
    engine = pgtenancy_engine_factory("asyncpg")
    for tenant in TENANTS:
        async with tenant_context(tenant), engine.connect() as conn:
            rows = (await conn.execute(text("SELECT tenant_id FROM notes"))).scalars().all()
        assert rows and set(rows) == {tenant}
        assert len(rows) == ROWS_PER_TENANT[tenant]
    await engine.dispose()
