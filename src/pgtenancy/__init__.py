"""pgtenancy: PostgreSQL row-level security as the wall between the tenants of an application."""

from pgtenancy.config import DEFAULT_SETTING, validate_tenant_id
from pgtenancy.context import current_tenant_id, tenant_context, without_tenant
from pgtenancy.engine import (
    FallbackWarning,
    TenancyConfig,
    UnverifiedVersionWarning,
    instrument,
    instrumentation_path,
    is_instrumented,
    uninstrument,
)
from pgtenancy.errors import (
    AutocommitError,
    ConfigurationError,
    InvalidTenantError,
    JobHeaderError,
    NoTenantError,
    TenancyError,
    TenantSwitchError,
    UnsafeRoleError,
    UnsafeStatementError,
)
from pgtenancy.orm import TenantMixin, tenant_column, tenant_field
from pgtenancy.pruning import disable_tenant_criteria, enable_tenant_criteria

__all__ = [
    "DEFAULT_SETTING",
    "AutocommitError",
    "ConfigurationError",
    "FallbackWarning",
    "InvalidTenantError",
    "JobHeaderError",
    "NoTenantError",
    "TenancyConfig",
    "TenancyError",
    "TenantMixin",
    "TenantSwitchError",
    "UnsafeRoleError",
    "UnsafeStatementError",
    "UnverifiedVersionWarning",
    "current_tenant_id",
    "disable_tenant_criteria",
    "enable_tenant_criteria",
    "instrument",
    "instrumentation_path",
    "is_instrumented",
    "tenant_column",
    "tenant_context",
    "tenant_field",
    "uninstrument",
    "validate_tenant_id",
    "without_tenant",
]
__version__ = "0.1.0"
