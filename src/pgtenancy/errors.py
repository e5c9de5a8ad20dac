"""The exception hierarchy: every refusal pgtenancy makes is a ``TenancyError``."""

from __future__ import annotations

__all__ = [
    "AutocommitError",
    "ConfigurationError",
    "InvalidTenantError",
    "JobHeaderError",
    "NoTenantError",
    "TenancyError",
    "TenantSwitchError",
    "UnsafeRoleError",
    "UnsafeStatementError",
]


class TenancyError(Exception):
    """Base class of every error raised by pgtenancy."""


class ConfigurationError(TenancyError, ValueError):
    """pgtenancy was configured with a value it cannot use safely (bad setting name, key type...)."""


class InvalidTenantError(TenancyError, ValueError):
    """A tenant id does not match the configured key type; it never reaches SQL."""


class NoTenantError(TenancyError):
    """A transaction began with no tenant bound and outside ``without_tenant()``."""


class TenantSwitchError(TenancyError):
    """A statement ran while a different tenant was bound than the one applied to its transaction."""


class AutocommitError(TenancyError):
    """An AUTOCOMMIT connection cannot carry a transaction-local tenant setting."""


class UnsafeRoleError(TenancyError):
    """The connected database role would bypass row-level security."""


class UnsafeStatementError(TenancyError):
    """A statement would re-point the tenant setting or end the transaction carrying it; it was not sent."""


class JobHeaderError(TenancyError):
    """A job's tenant header is malformed, unsigned, forged, expired or copied from another job."""
