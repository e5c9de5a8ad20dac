"""The two engines: the app role's, instrumented, for tenants; the admin role's, for staff reports only."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from pgtenancy import instrument
from saas.settings import Settings

__all__ = ["Database"]


@dataclass(frozen=True)
class Database:
    """The app's connections: ``sessions`` for tenant work, ``admin`` for cross-tenant reports.

    ``engine`` connects as the app role and is instrumented: every transaction carries the bound tenant,
    one with none raises ``NoTenantError``, and a role that bypasses row-level security is refused.
    ``admin`` connects as a BYPASSRLS role and is deliberately not instrumented; only the admin routes use it.
    """

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    admin: AsyncEngine

    @classmethod
    def connect(cls, settings: Settings) -> Database:
        engine = instrument(create_async_engine(settings.database_url, pool_size=10))
        return cls(
            engine=engine,
            sessions=async_sessionmaker(engine, expire_on_commit=False),
            admin=create_async_engine(settings.admin_database_url, pool_size=2),
        )

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.admin.dispose()
