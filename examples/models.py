import os

from sqlalchemy import Identity, PrimaryKeyConstraint
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgtenancy import TenantMixin, instrument, tenant_context


class Base(DeclarativeBase):
    pass


class Invoice(TenantMixin, Base):  # adds tenant_id: NOT NULL, indexed, defaults to the bound tenant
    __tablename__ = "invoices"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "id"),)  # keys include the tenant

    id: Mapped[int] = mapped_column(Identity())
    body: Mapped[str]


Session = instrument(async_sessionmaker(create_async_engine(os.environ["DATABASE_URL"])))


async def add_invoice(tenant_id, body):
    async with tenant_context(tenant_id), Session() as session:
        session.add(Invoice(body=body))  # tenant_id is filled in by the database
        await session.commit()
