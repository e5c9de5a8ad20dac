"""Resolvers: small callables that find, in an ASGI scope, the tenant a request or WebSocket acts for.

A resolver is called with the scope (sync or async) and returns a tenant id or ``None`` ("not
here, ask the next one"). It raises a ``TenantResolutionError`` for input it must refuse. The
middleware validates whatever comes back against its ``key_type`` before binding it.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, TypeAlias

from starlette.requests import HTTPConnection
from starlette.types import Scope

from pgtenancy.asgi.problems import InvalidCredentialsError, MalformedTenantError
from pgtenancy.config import TenantId
from pgtenancy.errors import ConfigurationError

__all__ = [
    "CLAIMS_SCOPE_KEY",
    "HeaderResolver",
    "JWKSource",
    "JWTClaimResolver",
    "PathResolver",
    "Resolver",
    "ScopeResolver",
    "SubdomainResolver",
    "header_value",
    "jwt_claims",
    "route_path",
    "scope_principal",
]

CLAIMS_SCOPE_KEY = "pgtenancy.jwt_claims"  # scope key: claims a JWTClaimResolver verified for the request
MAX_HEADER_LENGTH = 256
MAX_TOKEN_LENGTH = 8192
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)
_CONTROL_RE = re.compile(rb"[\x00-\x1f\x7f]")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DOMAIN_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_log = logging.getLogger("pgtenancy.asgi")

ResolvedTenant: TypeAlias = "TenantId | None"


class Resolver(Protocol):
    """Anything called with the ASGI scope that returns (or awaits to) a tenant id or ``None``.

    A resolver whose ``needs_credentials`` attribute is true turns "no tenant found" into a 401.
    """

    def __call__(self, scope: Scope, /) -> ResolvedTenant | Awaitable[ResolvedTenant]: ...


def header_value(scope: Scope, name: str, *, max_length: int = MAX_HEADER_LENGTH) -> str | None:
    """The one value of header ``name`` in ``scope``, stripped; ``None`` if absent or empty.

    Refuses (``MalformedTenantError``) what smells of header injection: a value longer than
    ``max_length`` bytes, control characters (CR, LF, NUL...), or the header repeated with different values.
    """
    key = name.lower().encode("latin-1")
    found: bytes | None = None
    for raw_name, raw_value in scope.get("headers", ()):
        if raw_name.lower() != key:
            continue
        if len(raw_value) > max_length:
            raise MalformedTenantError(f"the {name} header is too long")
        if found is not None and raw_value != found:
            raise MalformedTenantError(f"conflicting values for the {name} header")
        found = raw_value
    if found is None:
        return None
    value = found.strip(b" \t")
    if _CONTROL_RE.search(value):
        raise MalformedTenantError(f"control characters in the {name} header")
    return value.decode("latin-1") or None


def route_path(scope: Scope) -> str:
    """The request path below the application's ``root_path`` (what the router matches)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def jwt_claims(connection: HTTPConnection | Scope) -> dict[str, Any] | None:
    """The claims a ``JWTClaimResolver`` verified for this request or WebSocket (a Request or a scope)."""
    scope = connection.scope if isinstance(connection, HTTPConnection) else connection
    claims: dict[str, Any] | None = scope.get(CLAIMS_SCOPE_KEY)
    return claims


def scope_principal(scope: Scope) -> Any | None:
    """Who is making the request: claims a ``JWTClaimResolver`` verified, else ``scope["user"]``/``["auth"]``.

    An unauthenticated ``scope["user"]`` (``is_authenticated`` false, as Starlette's
    ``UnauthenticatedUser``) counts as nobody.
    """
    claims = scope.get(CLAIMS_SCOPE_KEY)
    if claims is not None:
        return claims
    user = scope.get("user")
    if user is not None:
        return user if getattr(user, "is_authenticated", True) else None
    return scope.get("auth")


class HeaderResolver:
    """The tenant named by a request header, ``X-Tenant-ID`` by default."""

    needs_credentials: ClassVar[bool] = False

    def __init__(self, name: str = "X-Tenant-ID", *, max_length: int = MAX_HEADER_LENGTH) -> None:
        if not _TOKEN_RE.fullmatch(name):
            raise ConfigurationError(f"invalid header name {name!r}")
        self.name = name
        self.max_length = max_length

    def __call__(self, scope: Scope) -> str | None:
        return header_value(scope, self.name, max_length=self.max_length)


class SubdomainResolver:
    """The tenant named by the first label of the host: ``acme.example.com`` -> ``acme``.

    A host outside ``base_domain``, the base domain itself and the labels in ``exclude`` give ``None``;
    a deeper host (``a.b.example.com``) is malformed.
    """

    needs_credentials: ClassVar[bool] = False

    def __init__(self, base_domain: str, *, exclude: Iterable[str] = ("www",)) -> None:
        domain = base_domain.lower().strip(".")
        if not _DOMAIN_RE.fullmatch(domain):
            raise ConfigurationError(f"invalid base domain {base_domain!r}")
        self.base_domain = domain
        self.exclude = frozenset(label.lower() for label in exclude)
        self._suffix = "." + domain

    def __call__(self, scope: Scope) -> str | None:
        host = header_value(scope, "Host")
        if host is None:
            return None
        host = host.lower()
        if not host.startswith("["):  # an IPv6 literal never matches a domain
            host = host.partition(":")[0]
        host = host.rstrip(".")
        if not host.endswith(self._suffix):
            return None
        label = host[: -len(self._suffix)]
        if label in self.exclude:
            return None
        if not _LABEL_RE.fullmatch(label):
            raise MalformedTenantError("malformed tenant subdomain")
        return label


class PathResolver:
    """The tenant named by a path segment, matched by a template such as ``"/tenants/{tenant}"``.

    The middleware runs before routing, so route parameters do not exist yet: the template is
    matched against the leading segments of the path (``/tenants/acme/notes`` matches too).
    ``{name}`` matches one segment; ``param`` picks the tenant's placeholder (default: the only one).
    """

    needs_credentials: ClassVar[bool] = False

    def __init__(self, template: str, *, param: str | None = None) -> None:
        if not template.startswith("/"):
            raise ConfigurationError(f"path template {template!r} must start with '/'")
        parts: list[str] = []
        names: list[str] = []
        for segment in template.strip("/").split("/"):
            match = _PLACEHOLDER_RE.fullmatch(segment)
            if match:
                names.append(match[1])
                parts.append("(?P<" + match[1] + ">[^/]+)")
            elif "{" in segment or "}" in segment or not segment:
                raise ConfigurationError(f"invalid segment {segment!r} in path template {template!r}")
            else:
                parts.append(re.escape(segment))
        if param is None and len(names) == 1:
            param = names[0]
        if param is None or param not in names or len(set(names)) != len(names):
            raise ConfigurationError(
                f"path template {template!r} needs distinct placeholders, one of them the tenant's "
                f"({param!r})"
            )
        self.template = template
        self.param = param
        self._regex = re.compile("/" + "/".join(parts) + "(?:/|$)")

    def __call__(self, scope: Scope) -> str | None:
        match = self._regex.match(route_path(scope))
        return match[self.param] if match else None


class ScopeResolver:
    """The tenant of a principal an authentication middleware already put in ``scope["user"]``/``["auth"]``.

    Reads ``attribute`` from the principal (a key if it is a mapping); with no principal the
    middleware answers 401.
    """

    needs_credentials: ClassVar[bool] = True

    def __init__(self, attribute: str = "tenant_id") -> None:
        self.attribute = attribute

    def __call__(self, scope: Scope) -> Any | None:
        principal = scope_principal(scope)
        if principal is None:
            return None
        if isinstance(principal, Mapping):
            return principal.get(self.attribute)
        return getattr(principal, self.attribute, None)


JWKSource: TypeAlias = "Mapping[str, Any] | Callable[[], Any]"


class JWTClaimResolver:
    """The tenant in a claim of a signature-verified ``Authorization: Bearer`` JSON Web Token.

    :param claim: the claim holding the tenant id.
    :param key: the verification key: an HMAC secret for ``HS*``, a public key (object or PEM) otherwise.
        It must fit every algorithm listed, so one resolver never mixes HMAC and public-key algorithms
        (that mix is the classic algorithm-confusion attack).
    :param jwks: instead of ``key``, a JWK Set (``{"keys": [...]}``) or a callable (sync or async)
        returning one or a ``jwt.PyJWKSet``; the token's ``kid`` picks the key.
    :param algorithms: the accepted algorithms, explicitly; ``none`` is refused.
    :param audience: if given, the ``aud`` claim must contain it; if not, a token carrying ``aud`` is refused.
    :param issuer: if given, the ``iss`` claim must equal it.
    :param require: claims every token must carry (``exp`` by default, so no token lives forever).
    """

    needs_credentials: ClassVar[bool] = True

    def __init__(
        self,
        claim: str = "tenant_id",
        *,
        key: Any = None,
        jwks: JWKSource | None = None,
        algorithms: Iterable[str],
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0.0,
        require: Iterable[str] = ("exp",),
    ) -> None:
        jwt = _import_jwt()
        self.claim = claim
        self.algorithms = tuple(algorithms)
        if not self.algorithms:
            raise ConfigurationError("JWTClaimResolver needs an explicit list of algorithms")
        for algorithm in self.algorithms:
            if algorithm.lower() == "none":
                raise ConfigurationError("the 'none' algorithm accepts unsigned tokens; it is never allowed")
            try:
                jwt.get_algorithm_by_name(algorithm)
            except NotImplementedError:
                raise ConfigurationError(f"unknown JWT algorithm {algorithm!r}") from None
        if (key is None) == (jwks is None):
            raise ConfigurationError("give JWTClaimResolver exactly one of key= or jwks=")
        if key is not None:
            for algorithm in self.algorithms:
                try:
                    jwt.get_algorithm_by_name(algorithm).prepare_key(key)
                except (jwt.InvalidKeyError, TypeError, ValueError):
                    raise ConfigurationError(
                        f"the key does not fit algorithm {algorithm!r}: use an HMAC secret only with HS*, "
                        "a public key only with RS*/PS*/ES*/EdDSA, and one resolver per kind"
                    ) from None
        if isinstance(jwks, Mapping):
            try:
                jwks = jwt.PyJWKSet.from_dict(dict(jwks))
            except jwt.PyJWTError as exc:
                raise ConfigurationError(f"unusable JWK Set: {exc}") from None
        self.key = key
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.require = tuple(require)

    async def __call__(self, scope: Scope) -> Any | None:
        claims = await self.verify(scope)
        return None if claims is None else claims.get(self.claim)

    async def verify(self, scope: Scope) -> dict[str, Any] | None:
        """The verified claims of the request's bearer token; ``None`` without one; 401 if it is bad.

        Usable on its own as the middleware's ``principal`` when the tenant comes from elsewhere. The
        claims are kept in the scope for ``jwt_claims(request)``. Why a token is refused is logged
        (logger ``pgtenancy.asgi``, the error's class only, never the token); the client gets fixed text.
        """
        jwt = _import_jwt()
        try:
            authorization = header_value(scope, "Authorization", max_length=MAX_TOKEN_LENGTH)
        except MalformedTenantError:  # over-long, control characters, conflicting copies: bad credentials
            _log.warning("bearer token refused: unusable Authorization header")
            raise InvalidCredentialsError("malformed authorization header") from None
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token:
            raise InvalidCredentialsError("malformed bearer token")
        try:
            key = self.key if self.key is not None else await self._jwk_for(jwt, token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(self.require)},
            )
        except jwt.PyJWTError as exc:
            _log.warning("bearer token refused: %s", _refusal(exc))
            if isinstance(exc, jwt.ExpiredSignatureError):
                raise InvalidCredentialsError("the token has expired") from None
            raise InvalidCredentialsError("invalid token") from None
        scope[CLAIMS_SCOPE_KEY] = claims
        return claims

    async def _jwk_for(self, jwt: Any, token: str) -> Any:
        """The signing key of the JWK Set that the token's ``kid`` names (or the set's only key)."""
        keys: Any = self.jwks  # a PyJWKSet, or a callable returning one (or its dict)
        if callable(keys):
            keys = keys()
            if inspect.isawaitable(keys):
                keys = await keys
        if isinstance(keys, Mapping):
            keys = jwt.PyJWKSet.from_dict(dict(keys))
        signing = [jwk for jwk in keys if jwk.public_key_use in (None, "sig")]
        kid = jwt.get_unverified_header(token).get("kid")
        matches = [jwk for jwk in signing if jwk.key_id == kid] if kid is not None else signing
        if len(matches) != 1:
            raise jwt.InvalidKeyError("no single signing key in the JWK Set matches the token")
        return matches[0]


def _refusal(exc: Exception) -> str:
    """Why PyJWT refused a token, without any of its contents: the error class and a missing claim's name."""
    claim = getattr(exc, "claim", None)  # MissingRequiredClaimError names a claim this resolver requires
    return type(exc).__name__ + (f" ({claim})" if isinstance(claim, str) else "")


def _import_jwt() -> Any:
    """PyJWT, imported on first use; only the JWT resolver needs it."""
    try:
        import jwt
    except ImportError as exc:
        raise ImportError("JWTClaimResolver needs PyJWT: pip install 'pgtenancy[asgi]'") from exc
    return jwt
