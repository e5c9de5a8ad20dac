"""Model-side helpers: a tenant column whose default is the tenant bound to the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Text, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, declared_attr, mapped_column
from sqlalchemy.types import TypeEngine

from pgtenancy.config import DEFAULT_SETTING, validate_key_type
from pgtenancy.predicate import tenant_value_sql

__all__ = ["TENANT_INFO_KEY", "TenantMixin", "tenant_column", "tenant_default_sql"]

TENANT_INFO_KEY = "pgtenancy"  # Column.info key marking a table's tenant column: {"key_type", "setting"}

_TYPES: dict[str, type[TypeEngine[Any]]] = {"uuid": UUID, "int": BigInteger, "str": Text}


def tenant_default_sql(*, key_type: str = "uuid", setting: str = DEFAULT_SETTING) -> str:
    """The SQL expression that reads the transaction's tenant: NULL (so NOT NULL rejects it) when none."""
    return tenant_value_sql(setting, key_type)


def tenant_column(
    *, key_type: str = "uuid", setting: str = DEFAULT_SETTING, primary_key: bool = False, **kwargs: Any
) -> Any:
    """A ``mapped_column`` for the tenant id: NOT NULL, indexed, defaulting to the bound tenant.

    The server default reads the same setting the RLS policy does, so an insert that does not set
    the column is written for the transaction's tenant, and one made with no tenant fails NOT NULL.
    """
    kind = validate_key_type(key_type)
    kwargs.setdefault("index", not primary_key)
    return mapped_column(
        _TYPES[kind](),
        nullable=False,
        primary_key=primary_key,
        server_default=text(tenant_default_sql(key_type=kind, setting=setting)),
        info={TENANT_INFO_KEY: {"key_type": kind, "setting": setting}},
        **kwargs,
    )


class TenantMixin:
    """Declarative mixin: a ``tenant_id`` column (see ``tenant_column``) that marks the table isolated.

    Set ``__tenant_key_type__`` (``"uuid"`` default, ``"int"``, ``"str"``) on the model to change its type.
    """

    __tenant_key_type__: str = "uuid"
    __tenant_setting__: str = DEFAULT_SETTING

    @declared_attr
    def tenant_id(cls) -> Mapped[Any]:
        column: Mapped[Any] = tenant_column(key_type=cls.__tenant_key_type__, setting=cls.__tenant_setting__)
        return column
