"""ASGI integration: ``TenantMiddleware`` binds the tenant of every request and WebSocket it serves.

Needs the ``asgi`` extra (Starlette, PyJWT): ``pip install 'pgtenancy[asgi]'``.
"""

try:
    import starlette  # noqa: F401 - fail here, naming the remedy, not deep inside an import
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("pgtenancy.asgi needs Starlette: pip install 'pgtenancy[asgi]'") from exc

from pgtenancy.asgi.middleware import (
    FASTAPI_DOCS,
    AccessCheck,
    ErrorHandler,
    PrincipalSource,
    TenantMiddleware,
    get_jwt_claims,
    get_tenant_id,
)
from pgtenancy.asgi.problems import (
    PROBLEM_MEDIA_TYPE,
    WS_POLICY_VIOLATION,
    InvalidCredentialsError,
    MalformedTenantError,
    MissingTenantError,
    TenantForbiddenError,
    TenantResolutionError,
    problem_response,
)
from pgtenancy.asgi.resolvers import (
    HeaderResolver,
    JWTClaimResolver,
    PathResolver,
    Resolver,
    ScopeResolver,
    SubdomainResolver,
    jwt_claims,
    scope_principal,
)

__all__ = [
    "FASTAPI_DOCS",
    "PROBLEM_MEDIA_TYPE",
    "WS_POLICY_VIOLATION",
    "AccessCheck",
    "ErrorHandler",
    "HeaderResolver",
    "InvalidCredentialsError",
    "JWTClaimResolver",
    "MalformedTenantError",
    "MissingTenantError",
    "PathResolver",
    "PrincipalSource",
    "Resolver",
    "ScopeResolver",
    "SubdomainResolver",
    "TenantForbiddenError",
    "TenantMiddleware",
    "TenantResolutionError",
    "get_jwt_claims",
    "get_tenant_id",
    "jwt_claims",
    "problem_response",
    "scope_principal",
]
