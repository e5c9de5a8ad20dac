"""Model-side helpers: a tenant column whose default is the tenant bound to the transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Index, Table, Text, event, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, Mapper, declared_attr, mapped_column
from sqlalchemy.types import TypeEngine

from pgtenancy.config import DEFAULT_SETTING, validate_key_type
from pgtenancy.predicate import tenant_value_sql

__all__ = ["TENANT_INFO_KEY", "TenantMixin", "tenant_column", "tenant_default_sql", "tenant_field"]

TENANT_INFO_KEY = "pgtenancy"  # Column.info key marking a table's tenant column: {"key_type", "setting"}
_AUTO_INDEX = (
    "pgtenancy.auto_index"  # Column.info key of a tenant_field() column whose index is decided later
)

_TYPES: dict[str, type[TypeEngine[Any]]] = {"uuid": UUID, "int": BigInteger, "str": Text}
_FIRST = -1000  # sort_order placing the tenant column before the model's own columns (their default is 0)


def tenant_default_sql(*, key_type: str = "uuid", setting: str = DEFAULT_SETTING) -> str:
    """The SQL expression that reads the transaction's tenant: NULL (so NOT NULL rejects it) when none."""
    return tenant_value_sql(setting, key_type)


def tenant_column(
    *,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    primary_key: bool = False,
    index: bool | None = None,
    **kwargs: Any,
) -> Any:
    """A ``mapped_column`` for the tenant id: NOT NULL, first in the table, defaulting to the bound tenant.

    The server default reads the same setting the RLS policy does, so an insert that does not set
    the column is written for the transaction's tenant, and one made with no tenant fails NOT NULL.
    With ``index=None`` the table gets an index on the column only when no primary key, unique
    constraint or index of the table already leads with it (the policy's lookups need one, not two).
    """
    kind = validate_key_type(key_type)
    kwargs.setdefault("sort_order", _FIRST)
    mapped: Any = mapped_column(
        _TYPES[kind](),
        nullable=False,
        primary_key=primary_key,
        index=index,
        server_default=text(tenant_default_sql(key_type=kind, setting=setting)),
        info={TENANT_INFO_KEY: {"key_type": kind, "setting": setting}},
        **kwargs,
    )
    if index is None and not primary_key:
        event.listen(mapped.column, "after_parent_attach", _index_once_the_table_is_built)
    return mapped


def _index_once_the_table_is_built(column: Column[Any], table: Table) -> None:
    """Defer the index decision until the table holds its keys (they are attached after the columns)."""
    event.listen(table, "after_parent_attach", lambda table, metadata: _index_unless_keyed(table, column))


def _index_unless_keyed(table: Table, column: Column[Any]) -> None:
    """Index ``column`` unless the table's primary key, a unique constraint or an index leads with it."""
    keys = [table.primary_key, *table.constraints, *table.indexes]
    if not any(list(getattr(key, "columns", ()))[:1] == [column] for key in keys):
        Index(None, column)


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


def tenant_field(
    *,
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    primary_key: bool = False,
    index: bool | None = None,
) -> Any:
    """A SQLModel ``Field`` for the tenant id: a model field, NOT NULL, defaulting to the bound tenant.

    ``tenant_id: uuid.UUID | None = tenant_field()`` makes the tenant id a field of the model (validated,
    in ``model_dump()``) whose column follows the rules of ``tenant_column``; it stays ``None`` on a new
    object until the database fills it in. SQLModel orders columns as the fields, inherited ones first:
    declare it first, or in a base model the tables share. Needs the ``sqlmodel`` extra.
    """
    try:
        from sqlmodel import Field
    except ImportError as exc:
        raise ImportError(
            "pgtenancy.orm.tenant_field needs SQLModel: pip install 'pgtenancy[sqlmodel]'"
        ) from exc
    kind = validate_key_type(key_type)
    info: dict[str, Any] = {TENANT_INFO_KEY: {"key_type": kind, "setting": setting}}
    if index is None and not primary_key:
        info[_AUTO_INDEX] = True
        if not event.contains(Mapper, "after_mapper_constructed", _index_sqlmodel_tables):
            event.listen(Mapper, "after_mapper_constructed", _index_sqlmodel_tables)
    return Field(
        default=None,
        primary_key=primary_key,
        index=bool(index),
        sa_type=_TYPES[kind],
        nullable=False,
        sa_column_kwargs={
            "server_default": text(tenant_default_sql(key_type=kind, setting=setting)),
            "info": info,
        },
    )


def _index_sqlmodel_tables(mapper: Mapper[Any], class_: type) -> None:
    """Once a model's table holds its keys, index its ``tenant_field()`` column unless a key leads with it."""
    table = mapper.local_table
    if isinstance(table, Table):
        for column in table.columns:
            if column.info.get(_AUTO_INDEX):
                _index_unless_keyed(table, column)
