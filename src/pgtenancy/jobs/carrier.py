"""The tenant of a job: captured into message headers on enqueue, checked and bound again on the worker.

On the worker a header is untrusted input: whoever can write to the broker can write one. The tenant
id is validated against the engine's key type; with a ``signing_key`` the header also carries an
HMAC-SHA256 over the binding, the job's id and an expiry, so a header that is missing, forged, copied
onto another job or expired is refused before the job's body runs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

from pgtenancy.config import validate_tenant_id
from pgtenancy.context import NO_TENANT, Binding, current_binding, tenant_context, without_tenant
from pgtenancy.errors import ConfigurationError, JobHeaderError, NoTenantError

__all__ = ["BINDING", "EXPIRES", "HEADERS", "JOB", "SIGNATURE", "capture", "restore"]

BINDING: Final = "pgtenancy-binding"  # "tenant:<id>", or "none" for work on behalf of no tenant
JOB: Final = "pgtenancy-job"  # the id of the job the signature is for
EXPIRES: Final = "pgtenancy-expires"  # unix time after which the signature is refused
SIGNATURE: Final = "pgtenancy-signature"  # hex HMAC-SHA256 of the three above
HEADERS: Final = (BINDING, JOB, EXPIRES, SIGNATURE)
_NONE: Final = "none"
_TENANT: Final = "tenant:"
_VERSION: Final = b"pgtenancy-job-v1"

Key = bytes | str


def capture(
    *, signing_key: Key | None = None, job_id: str | None = None, ttl: float = 86400.0
) -> dict[str, str]:
    """The current binding as headers for a job about to be enqueued; raises ``NoTenantError`` if unbound.

    :param signing_key: sign the headers (the workers must know the same key).
    :param job_id: the id the job will be enqueued with; required to sign (a signature names its job).
    :param ttl: seconds the signature stays valid (the job must start within them, retries included).
    """
    binding = current_binding()
    if binding is None:
        raise NoTenantError(
            "no tenant is bound while enqueuing a job: enqueue inside tenant_context(tenant_id), or inside "
            "without_tenant() for a job on behalf of no tenant"
        )
    headers = {BINDING: _NONE if binding is NO_TENANT else _TENANT + str(binding)}
    if signing_key is None:
        return headers
    if not job_id:
        raise ConfigurationError("a signed job header names its job: pass the job's id to capture()")
    headers[JOB] = job_id
    headers[EXPIRES] = str(int(time.time() + ttl))
    headers[SIGNATURE] = _sign(signing_key, headers)
    return headers


def restore(
    headers: Mapping[str, object] | None,
    *,
    key_type: str = "uuid",
    signing_key: Key | None = None,
    job_id: str | None = None,
    tenant_free: bool = False,
) -> Binding:
    """The context manager that binds what ``headers`` carry, checked before anything runs.

    :param key_type: the engine's key type: the tenant id must be one (``InvalidTenantError``).
    :param signing_key: require a valid, unexpired signature for ``job_id`` (``JobHeaderError``).
    :param job_id: the id of the job being run, which a signature must name.
    :param tenant_free: the job is declared to need no tenant: without headers it runs inside
        ``without_tenant()`` instead of raising ``NoTenantError``.
    """
    found = {name: headers.get(name) for name in HEADERS} if headers is not None else {}
    value = found.get(BINDING)
    if value is None:
        if tenant_free:
            return without_tenant()
        raise NoTenantError(
            "the job carries no tenant header: enqueue it with pgtenancy's helpers inside tenant_context(), "
            "or declare the task tenant-free"
        )
    if not isinstance(value, str):
        raise JobHeaderError("the job's tenant header is not text")
    if signing_key is not None:
        _verify(signing_key, found, job_id)
    if value == _NONE:
        return without_tenant()
    if not value.startswith(_TENANT):
        raise JobHeaderError("the job's tenant header is malformed")
    return tenant_context(validate_tenant_id(value[len(_TENANT) :], key_type))


def _verify(key: Key, found: Mapping[str, object], job_id: str | None) -> None:
    """Raise ``JobHeaderError`` unless the headers are signed with ``key`` for ``job_id`` and unexpired."""
    if not job_id:
        raise ConfigurationError("verifying a signed job header needs the id of the job being run")
    signature, expires = found.get(SIGNATURE), found.get(EXPIRES)
    if not isinstance(signature, str) or not isinstance(expires, str) or not isinstance(found.get(JOB), str):
        raise JobHeaderError("the job's tenant header is not signed, and this worker requires a signature")
    if not hmac.compare_digest(signature, _sign(key, {n: str(found[n]) for n in (BINDING, JOB, EXPIRES)})):
        raise JobHeaderError("the job's tenant header has a bad signature")
    if found.get(JOB) != job_id:
        raise JobHeaderError("the job's tenant header was signed for another job")
    if not expires.isdigit() or int(expires) < time.time():
        raise JobHeaderError("the job's tenant header has expired")


def _sign(key: Key, headers: Mapping[str, str]) -> str:
    secret = key.encode() if isinstance(key, str) else key
    message = b"\x00".join([_VERSION, *(headers[name].encode() for name in (BINDING, JOB, EXPIRES))])
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
