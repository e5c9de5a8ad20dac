"""Validation of tenant ids, key types and setting names, before anything reaches SQL."""

from __future__ import annotations

import re
import uuid
from typing import Literal, TypeAlias

from pgtenancy.errors import ConfigurationError, InvalidTenantError

__all__ = [
    "DEFAULT_SETTING",
    "KEY_TYPES",
    "KeyType",
    "TenantId",
    "sql_type_name",
    "validate_env_name",
    "validate_key_type",
    "validate_setting_name",
    "validate_tenant_id",
]

KeyType: TypeAlias = Literal["uuid", "int", "str"]
TenantId: TypeAlias = "uuid.UUID | int | str"

DEFAULT_SETTING = "app.current_tenant_id"
KEY_TYPES: tuple[KeyType, ...] = ("uuid", "int", "str")

_SQL_TYPES: dict[str, str] = {"uuid": "uuid", "int": "bigint", "str": "text"}
_SETTING_RE = re.compile(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_INT_RE = re.compile(r"-?[0-9]{1,19}")
_STR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_BIGINT = (-(2**63), 2**63 - 1)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_key_type(key_type: str) -> KeyType:
    """Return ``key_type`` if pgtenancy supports it, else raise ``ConfigurationError``."""
    if key_type not in KEY_TYPES:
        raise ConfigurationError(f"unsupported key_type {key_type!r}: use one of {', '.join(KEY_TYPES)}")
    return key_type


def sql_type_name(key_type: str) -> str:
    """The PostgreSQL type a tenant column of ``key_type`` has (and a policy casts the setting to)."""
    return _SQL_TYPES[validate_key_type(key_type)]


def validate_env_name(name: object, parameter: str) -> str:
    """``name`` if it can name an environment variable, else a ``ConfigurationError`` naming ``parameter``."""
    if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
        raise ConfigurationError(f"{parameter} must name an environment variable, not {name!r}")
    return name


def validate_setting_name(setting: str) -> str:
    """Return ``setting`` if it is a plain two-part custom setting name such as ``app.current_tenant_id``."""
    if not isinstance(setting, str) or not _SETTING_RE.fullmatch(setting):
        raise ConfigurationError(
            f"invalid setting name {setting!r}: use a lowercase two-part name like 'app.current_tenant_id'"
        )
    return setting


def validate_tenant_id(value: object, key_type: str = "uuid") -> str:
    """Return the canonical text form of a tenant id of ``key_type``, or raise ``InvalidTenantError``.

    The result is safe to send to PostgreSQL, even rendered as a quoted literal: it only ever
    holds hex digits and dashes (uuid), digits (int) or ``[A-Za-z0-9_-]`` (str).
    """
    kind = validate_key_type(key_type)
    if kind == "uuid":
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, str) and _UUID_RE.fullmatch(value):
            return value.lower()
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INT_RE.fullmatch(value):
            number = int(value)
        else:
            number = None
        if number is not None and _BIGINT[0] <= number <= _BIGINT[1]:
            return str(number)
    elif isinstance(value, str) and _STR_RE.fullmatch(value):
        return value
    raise InvalidTenantError(f"invalid tenant id for key_type {kind!r}: {_preview(value)}")


def _preview(value: object) -> str:
    """A short, printable rendering of untrusted input for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
