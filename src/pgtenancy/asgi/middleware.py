"""``TenantMiddleware``: resolve, check and bind the tenant of every HTTP request and WebSocket."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from pgtenancy.asgi.problems import (
    InvalidCredentialsError,
    MalformedTenantError,
    MissingTenantError,
    TenantForbiddenError,
    TenantResolutionError,
    close_websocket,
    problem_response,
)
from pgtenancy.asgi.resolvers import Resolver, jwt_claims, route_path, scope_principal
from pgtenancy.config import TenantId, validate_key_type, validate_tenant_id
from pgtenancy.context import current_tenant_id, tenant_context
from pgtenancy.errors import ConfigurationError, InvalidTenantError, NoTenantError

__all__ = [
    "FASTAPI_DOCS",
    "AccessCheck",
    "ErrorHandler",
    "PrincipalSource",
    "TenantMiddleware",
    "get_jwt_claims",
    "get_tenant_id",
]

FASTAPI_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # FastAPI's default doc routes

T = TypeVar("T")
AccessCheck: TypeAlias = "Callable[[Any, str], bool | Awaitable[bool]]"
PrincipalSource: TypeAlias = "Callable[[Scope], Any | Awaitable[Any]]"
ErrorHandler: TypeAlias = "Callable[[Scope, TenantResolutionError], ASGIApp]"


def _problem(scope: Scope, error: TenantResolutionError) -> ASGIApp:
    """The default HTTP error answer: an RFC 9457 problem document."""
    return problem_response(error)


class TenantMiddleware:
    """Bind the request's tenant with ``tenant_context`` for the whole request or WebSocket connection.

    The binding covers streaming bodies and background tasks (they run inside the app call) and is
    undone when the call returns. ``lifespan`` and other scope types pass through untouched.

    :param resolver: a resolver, or a list of them tried in order (the first non-``None`` answer wins).
    :param key_type: ``"uuid"``, ``"int"`` or ``"str"``: a resolved id that does not match is a 400.
    :param exempt_paths: paths served with no tenant bound: ``"/health"`` matches that path with or
        without a trailing slash (not ``/healthz`` nor ``/health/x``), an entry ending in ``/``
        (``"/static/"``) matches every path below it. ``FASTAPI_DOCS`` lists FastAPI's doc pages.
    :param access_check: ``(principal, tenant) -> bool``, sync or async; false is a 403.
    :param principal: ``(scope) -> principal or None`` for the access check; by default the verified
        JWT claims, ``scope["user"]`` or ``scope["auth"]``. No principal is a 401.
    :param on_error: ``(scope, error) -> ASGI app`` answering an HTTP request that gets no tenant.
    """

    def __init__(
        self,
        app: ASGIApp,
        resolver: Resolver | Sequence[Resolver],
        *,
        key_type: str = "uuid",
        exempt_paths: Iterable[str] = (),
        access_check: AccessCheck | None = None,
        principal: PrincipalSource = scope_principal,
        on_error: ErrorHandler = _problem,
    ) -> None:
        resolvers = tuple(resolver) if isinstance(resolver, (list, tuple)) else (resolver,)
        if not resolvers or not all(callable(item) for item in resolvers):
            raise ConfigurationError("TenantMiddleware needs a resolver: a callable or a list of callables")
        self.app = app
        self.resolvers: tuple[Resolver, ...] = resolvers
        self.key_type = validate_key_type(key_type)
        self.access_check = access_check
        self.principal = principal
        self.on_error = on_error
        self.needs_credentials = any(getattr(item, "needs_credentials", False) for item in resolvers)
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in exempt_paths:
            if not path.startswith("/"):
                raise ConfigurationError(f"exempt path {path!r} must start with '/'")
            if path.endswith("/"):
                prefixes.append(path)
            else:
                exact.update((path, path + "/"))
        self._exempt_exact = frozenset(exact)
        self._exempt_prefixes = tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_exempt(route_path(scope)):
            await self.app(scope, receive, send)
            return
        try:
            tenant = await self.resolve(scope)
        except TenantResolutionError as error:
            if scope["type"] == "websocket":
                await close_websocket(error, receive, send)
            else:
                await self.on_error(scope, error)(scope, receive, send)
            return
        scope.setdefault("state", {})["tenant_id"] = tenant
        async with tenant_context(tenant):
            await self.app(scope, receive, send)

    def is_exempt(self, path: str) -> bool:
        """Whether ``path`` is served with no tenant bound."""
        return path in self._exempt_exact or path.startswith(self._exempt_prefixes)

    async def resolve(self, scope: Scope) -> str:
        """The canonical id of the tenant ``scope`` acts for, access-checked, or a TenantResolutionError."""
        value: Any = None
        try:
            for resolver in self.resolvers:
                value = await _maybe_await(resolver(scope))
                if value is not None:
                    break
            if value is None:
                if self.needs_credentials:
                    raise InvalidCredentialsError("credentials naming a tenant are required")
                raise MissingTenantError()
            tenant = validate_tenant_id(value, self.key_type)
        except InvalidTenantError:
            raise MalformedTenantError() from None
        if self.access_check is not None:
            principal = await _maybe_await(self.principal(scope))
            if principal is None:
                raise InvalidCredentialsError("authentication is required to act for a tenant")
            if not await _maybe_await(self.access_check(principal, tenant)):
                raise TenantForbiddenError()
        return tenant


async def get_tenant_id() -> TenantId:
    """The tenant bound to this request; a FastAPI dependency: ``Depends(get_tenant_id)``."""
    tenant = current_tenant_id()
    if tenant is None:
        raise NoTenantError(
            "no tenant is bound to this request: add TenantMiddleware, and do not exempt this path"
        )
    return tenant


async def get_jwt_claims(connection: HTTPConnection) -> dict[str, Any]:
    """The JWT claims verified for this request; a FastAPI dependency: ``Depends(get_jwt_claims)``."""
    claims = jwt_claims(connection)
    if claims is None:
        raise ConfigurationError(
            "no verified JWT claims for this request: give TenantMiddleware a JWTClaimResolver (as a "
            "resolver, or principal=JWTClaimResolver(...).verify), and do not exempt this path"
        )
    return claims


async def _maybe_await(value: T | Awaitable[T]) -> T:
    """``value``, awaited first if it is awaitable (resolvers and checks may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value
