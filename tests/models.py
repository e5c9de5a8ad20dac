"""ORM models of the test schema built in conftest.py."""

from __future__ import annotations

from sqlalchemy import BigInteger, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgtenancy import TenantMixin


class Base(DeclarativeBase):
    pass


class Note(TenantMixin, Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    body: Mapped[str] = mapped_column(Text)
