"""Opt-in sealing: the tenant travels with an HMAC that only the database's verifier function can check.

``instrument(engine, seal=Seal.from_env())`` signs ``tenant:backend_pid:expires`` with the seal key for
every transaction and sends it with ``BEGIN`` in a second transaction-local setting. Policies sealed by
``op.seal_tenant_isolation`` compare the tenant column with the verifier's answer, which is the tenant
only when the signature matches for this backend and has not expired: SQL that re-points the tenant
setting (an injection, however it builds the name) sees no rows and can write none. The key lives in a
table only the schema owner can read; the message format is written here and in ``seal_sql`` only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from pgtenancy.config import validate_setting_name
from pgtenancy.errors import ConfigurationError

__all__ = [
    "DEFAULT_KEY_ENV",
    "DEFAULT_SEAL_SETTING",
    "Seal",
    "Sealed",
    "Signer",
    "hmac_pads",
    "key_from_env",
    "seal_value",
    "seal_value_from_pads",
    "signer",
    "validate_key_id",
]

DEFAULT_SEAL_SETTING: Final = "pgtenancy.seal"
DEFAULT_KEY_ENV: Final = "PGTENANCY_SEAL_KEY"
_KEY_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_MIN_KEY_BYTES: Final = 32
_CACHE_MAX: Final = 1024  # tenants whose seal one connection keeps


def validate_key_id(key_id: object) -> str:
    """Return ``key_id`` if it is a short lowercase name (``[a-z0-9][a-z0-9_-]{0,31}``), else raise."""
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise ConfigurationError(f"invalid seal key id {key_id!r}: use 1-32 of a-z, 0-9, '_' and '-'")
    return key_id


def key_from_env(variable: str, who: str) -> bytes:
    """The key written as hex in environment variable ``variable``, at least 32 bytes long.

    :param who: what reads it, named in the error when the variable is unset.
    """
    text = os.environ.get(variable)
    if not text:
        raise ConfigurationError(f"{who}: set the environment variable {variable} to the seal key (hex)")
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigurationError(f"the seal key in ${variable} is not hexadecimal") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            f"the seal key in ${variable} has {len(key)} bytes; use at least {_MIN_KEY_BYTES} "
            "(python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def seal_value(key: bytes, key_id: str, tenant: str, backend_pid: int, expires: int) -> str:
    """``key_id:expires:hex(HMAC-SHA256(key, "tenant:backend_pid:expires"))``: what the verifier checks."""
    digest = hmac.new(key, _message(tenant, backend_pid, expires), hashlib.sha256).hexdigest()
    return f"{key_id}:{expires}:{digest}"


def seal_value_from_pads(
    inner_pad: bytes, outer_pad: bytes, key_id: str, tenant: str, backend_pid: int, expires: int
) -> str:
    """``seal_value`` from the HMAC pads the database stores for a key (what a role reading them can sign)."""
    inner = hashlib.sha256(inner_pad + _message(tenant, backend_pid, expires)).digest()
    return f"{key_id}:{expires}:{hashlib.sha256(outer_pad + inner).hexdigest()}"


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer pads of ``key``: what the key table stores (``add_key`` derives them)."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def _message(tenant: str, backend_pid: int, expires: int) -> bytes:
    return f"{tenant}:{backend_pid}:{expires}".encode()


@dataclass(frozen=True)
class Seal:
    """How an engine seals its tenant: the key (bytes, or a callable returning them, read when signing),
    its id in the database's key table, how long a signature is valid, and the setting it travels in.

    ``lifetime`` bounds how long a signature seen elsewhere (statement logs, ``pg_stat_activity``) could
    be replayed on the same backend; a connection re-signs a tenant once half of it has passed.
    """

    key: bytes | Callable[[], bytes] = field(repr=False)
    key_id: str = "1"
    lifetime: int = 60
    setting: str = DEFAULT_SEAL_SETTING

    def __post_init__(self) -> None:
        validate_key_id(self.key_id)
        validate_setting_name(self.setting)
        if not isinstance(self.lifetime, int) or not 5 <= self.lifetime <= 3600:
            raise ConfigurationError(f"seal lifetime must be 5 to 3600 seconds, not {self.lifetime!r}")
        if isinstance(self.key, bytes):
            self._checked(self.key)
        elif not callable(self.key):
            raise ConfigurationError("the seal key must be bytes or a callable returning bytes")

    @classmethod
    def from_env(cls, variable: str = DEFAULT_KEY_ENV, *, key_id: str = "1", lifetime: int = 60) -> Seal:
        """A seal whose key is the hex value of environment variable ``variable``, read now."""
        return cls(key_from_env(variable, "Seal.from_env"), key_id=key_id, lifetime=lifetime)

    def current_key(self) -> bytes:
        """The key to sign with now (a callable key is called each time)."""
        if isinstance(self.key, bytes):
            return self.key
        try:
            key = self.key()
        except Exception as error:
            raise ConfigurationError(f"the seal key callable failed: {type(error).__name__}") from error
        return self._checked(key)

    @staticmethod
    def _checked(key: object) -> bytes:
        if not isinstance(key, bytes) or len(key) < _MIN_KEY_BYTES:
            raise ConfigurationError(f"the seal key must be at least {_MIN_KEY_BYTES} bytes")
        return key


Sealed: TypeAlias = tuple[float, str]
"""A statement carrying a tenant value's seal on one connection, and until when (this process's clock,
``time.time()``) it is reused: half the seal's lifetime after it was signed."""
Signer: TypeAlias = Callable[[str], Sealed]
"""One connection's signer: seals a tenant value anew and records it in the connection's seals."""


def signer(
    seal: Seal, backend_pid: int, clock_offset: float, render: Callable[[str], str], seals: dict[str, Sealed]
) -> Signer:
    """A signer for one connection: seals for its backend, in the server's time, recorded in ``seals``.

    Callers read ``seals`` first and call the signer only when a value's entry is missing or stale: a
    fresh seal costs a dictionary lookup, not a call, on the path every transaction takes.

    :param clock_offset: the server's clock minus this process's, measured when the connection was made.
    :param render: the statement setting the seal setting to a value.
    """
    now, lifetime, refresh = time.time, seal.lifetime, seal.lifetime / 2

    def sign(value: str) -> Sealed:
        moment = now()
        expires = int(moment + clock_offset) + lifetime
        sealed = (
            moment + refresh,
            render(seal_value(seal.current_key(), seal.key_id, value, backend_pid, expires)),
        )
        if len(seals) >= _CACHE_MAX:
            seals.clear()
        seals[value] = sealed
        return sealed

    return sign
