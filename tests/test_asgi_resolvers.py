"""Resolvers: what each one reads from the ASGI scope, and every input it must refuse."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.authentication import SimpleUser, UnauthenticatedUser

from pgtenancy.asgi import (
    HeaderResolver,
    InvalidCredentialsError,
    JWTClaimResolver,
    MalformedTenantError,
    PathResolver,
    ScopeResolver,
    SubdomainResolver,
    scope_principal,
)
from pgtenancy.asgi.resolvers import CLAIMS_SCOPE_KEY, header_value
from pgtenancy.errors import ConfigurationError
from tests.asgi_app import (
    HS_SECRET,
    claims,
    hmac_token,
    hs_token,
    public_pem,
    rs_token,
    rsa_private_key,
    unsigned_token,
)

TENANT = "3f2b8f5e-0000-4000-8000-00000000abcd"


def scope(path: str = "/", headers: Iterable[tuple[str, str]] = (), **extra: Any) -> dict[str, Any]:
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return {"type": "http", "path": path, "root_path": "", "headers": raw, **extra}


def bearer(token: str) -> dict[str, Any]:
    return scope(headers=[("Authorization", "Bearer " + token)])


@pytest.fixture(scope="module")
def signer() -> rsa.RSAPrivateKey:
    return rsa_private_key()


@pytest.fixture(scope="module")
def other_signer() -> rsa.RSAPrivateKey:
    return rsa_private_key()


@pytest.fixture(scope="module")
def rs_resolver(signer: rsa.RSAPrivateKey) -> JWTClaimResolver:
    return JWTClaimResolver(key=public_pem(signer), algorithms=["RS256"], audience="notes-api", issuer="idp")


def rs_claims(**extra: Any) -> dict[str, Any]:
    return claims(TENANT, aud="notes-api", iss="idp", **extra)


# --- headers ---


def test_header_value_is_read_case_insensitively_and_stripped() -> None:
    assert header_value(scope(headers=[("x-TENANT-id", f"  {TENANT}\t")]), "X-Tenant-ID") == TENANT
    assert header_value(scope(), "X-Tenant-ID") is None
    assert header_value(scope(headers=[("X-Tenant-ID", "   ")]), "X-Tenant-ID") is None


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ([("X-Tenant-ID", "abc\r\nSet-Cookie: x=1")], "control characters in the X-Tenant-ID header"),
        ([("X-Tenant-ID", "abc\x7f")], "control characters in the X-Tenant-ID header"),
        ([("X-Tenant-ID", "a"), ("X-Tenant-ID", "b")], "conflicting values for the X-Tenant-ID header"),
        ([("X-Tenant-ID", "a" * 257)], "the X-Tenant-ID header is too long"),
    ],
)
def test_header_injection_is_malformed(headers: list[tuple[str, str]], detail: str) -> None:
    with pytest.raises(MalformedTenantError) as refused:
        HeaderResolver()(scope(headers=headers))
    assert refused.value.detail == detail and refused.value.status == 400


def test_header_resolver_reads_its_header_only() -> None:
    resolver = HeaderResolver("X-Org", max_length=40)
    assert resolver(scope(headers=[("X-Org", TENANT), ("X-Tenant-ID", "other")])) == TENANT
    assert resolver(scope(headers=[("X-Tenant-ID", TENANT)])) is None
    with pytest.raises(MalformedTenantError):
        resolver(scope(headers=[("X-Org", "a" * 41)]))
    with pytest.raises(ConfigurationError):
        HeaderResolver("X Org\r\n")


# --- subdomains ---


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("acme.example.com", "acme"),
        ("ACME.Example.com:8443", "acme"),
        ("acme.example.com.", "acme"),
        ("example.com", None),
        ("www.example.com", None),
        ("acme.example.org", None),
        ("acme.evil-example.com", None),
        ("[::1]:8000", None),
    ],
)
def test_subdomain_resolver(host: str, expected: str | None) -> None:
    assert SubdomainResolver("example.com")(scope(headers=[("Host", host)])) == expected


@pytest.mark.parametrize("host", ["a.b.example.com", "-acme.example.com", "ac_me.example.com"])
def test_subdomain_that_is_not_one_clean_label_is_malformed(host: str) -> None:
    with pytest.raises(MalformedTenantError):
        SubdomainResolver("example.com")(scope(headers=[("Host", host)]))


def test_subdomain_resolver_without_host_and_bad_configuration() -> None:
    assert SubdomainResolver("example.com")(scope()) is None
    assert (
        SubdomainResolver("Example.COM.", exclude=())(scope(headers=[("Host", "www.example.com")])) == "www"
    )
    for domain in ("", "exa mple.com", "*.example.com"):
        with pytest.raises(ConfigurationError):
            SubdomainResolver(domain)


# --- paths ---


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tenants/acme", "acme"),
        ("/tenants/acme/notes/7", "acme"),
        ("/tenants/", None),
        ("/tenantsx/acme", None),
        ("/notes", None),
    ],
)
def test_path_resolver_matches_leading_segments(path: str, expected: str | None) -> None:
    assert PathResolver("/tenants/{tenant}")(scope(path)) == expected


def test_path_resolver_with_several_placeholders_and_a_root_path() -> None:
    resolver = PathResolver("/{version}/orgs/{org}", param="org")
    assert resolver(scope("/api/v1/orgs/acme/notes", root_path="/api")) == "acme"
    assert resolver(scope("/v1/teams/acme")) is None


@pytest.mark.parametrize(
    ("template", "param"),
    [
        ("tenants/{tenant}", None),
        ("/a/{x}/{y}", None),
        ("/a/{x}", "y"),
        ("/a/{x}/{x}", "x"),
        ("/a/{x", None),
        ("/a//{x}", None),
        ("/a/b", None),
    ],
)
def test_path_resolver_bad_templates(template: str, param: str | None) -> None:
    with pytest.raises(ConfigurationError):
        PathResolver(template, param=param)


# --- authenticated principals ---


class Member(SimpleUser):
    def __init__(self, username: str, tenant_id: str) -> None:
        super().__init__(username)
        self.tenant_id = tenant_id


def test_scope_resolver_reads_the_principal() -> None:
    resolver = ScopeResolver()
    assert resolver(scope(user=Member("ann", TENANT))) == TENANT
    assert resolver(scope(user=SimpleUser("ann"))) is None
    assert resolver(scope(user=UnauthenticatedUser(), auth={"tenant_id": TENANT})) is None
    assert resolver(scope(auth={"tenant_id": TENANT})) == TENANT
    assert ScopeResolver("org")(scope(auth={"org": "acme"})) == "acme"
    assert resolver(scope()) is None


def test_scope_principal_prefers_verified_claims() -> None:
    user = SimpleUser("ann")
    assert scope_principal(scope(user=user)) is user
    assert scope_principal(scope(user=user, **{CLAIMS_SCOPE_KEY: {"sub": "x"}})) == {"sub": "x"}
    assert scope_principal(scope(user=UnauthenticatedUser())) is None


# --- JSON Web Tokens ---


async def test_jwt_resolver_returns_the_claim_of_a_valid_token_and_keeps_the_claims() -> None:
    request = bearer(hs_token(claims(TENANT)))
    assert await JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"])(request) == TENANT
    assert request[CLAIMS_SCOPE_KEY]["sub"] == "user-1"
    assert (
        await JWTClaimResolver("org", key=HS_SECRET, algorithms=["HS256"])(bearer(hs_token(claims(TENANT))))
        is None
    )


async def test_jwt_resolver_with_a_public_key(
    rs_resolver: JWTClaimResolver, signer: rsa.RSAPrivateKey
) -> None:
    assert await rs_resolver(bearer(rs_token(rs_claims(), signer))) == TENANT
    by_object = JWTClaimResolver(key=signer.public_key(), algorithms=["RS256"], require=())
    assert await by_object(bearer(rs_token(claims(TENANT), signer))) == TENANT


async def test_no_bearer_token_is_none_so_another_resolver_may_answer() -> None:
    resolver = JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"])
    assert await resolver(scope()) is None
    assert await resolver(scope(headers=[("Authorization", "Basic dXNlcjpwYXNz")])) is None


def forged(signer: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey) -> str:
    return rs_token(rs_claims(), other)


def tampered(signer: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey) -> str:
    header, _payload, signature = rs_token(rs_claims(), signer).split(".")
    evil = rs_token(rs_claims(tenant_id="00000000-0000-4000-8000-000000000000"), other).split(".")[1]
    return ".".join([header, evil, signature])


def hs256_signed_with_the_public_key(signer: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey) -> str:
    return hmac_token(rs_claims(), public_pem(signer))


BAD_TOKENS = {
    "forged": (forged, "invalid token"),
    "tampered": (tampered, "invalid token"),
    "expired": (lambda s, o: rs_token(rs_claims(exp=1), s), "the token has expired"),
    "wrong-audience": (lambda s, o: rs_token({**rs_claims(), "aud": "billing"}, s), "invalid token"),
    "no-audience": (
        lambda s, o: rs_token({k: v for k, v in rs_claims().items() if k != "aud"}, s),
        "invalid token",
    ),
    "wrong-issuer": (lambda s, o: rs_token({**rs_claims(), "iss": "elsewhere"}, s), "invalid token"),
    "no-expiry": (
        lambda s, o: rs_token({k: v for k, v in rs_claims().items() if k != "exp"}, s),
        "invalid token",
    ),
    "alg-none": (lambda s, o: unsigned_token(rs_claims()), "invalid token"),
    "alg-None-cased": (lambda s, o: unsigned_token(rs_claims(), alg="None"), "invalid token"),
    "hs256-with-rsa-public-key": (hs256_signed_with_the_public_key, "invalid token"),
    "garbage": (lambda s, o: "not.a.token", "invalid token"),
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_401_and_never_echoed(
    name: str, rs_resolver: JWTClaimResolver, signer: rsa.RSAPrivateKey, other_signer: rsa.RSAPrivateKey
) -> None:
    make, detail = BAD_TOKENS[name]
    token = make(signer, other_signer)
    with pytest.raises(InvalidCredentialsError) as refused:
        await rs_resolver(bearer(token))
    assert refused.value.status == 401
    assert refused.value.detail == detail
    assert token not in str(refused.value)


async def test_leeway_and_empty_bearer() -> None:
    lenient = JWTClaimResolver(key=HS_SECRET, algorithms=["HS256"], leeway=120)
    assert await lenient(bearer(hs_token(claims(TENANT, ttl=-30)))) == TENANT
    with pytest.raises(InvalidCredentialsError, match="malformed bearer token"):
        await lenient(scope(headers=[("Authorization", "Bearer   ")]))


def test_a_key_must_fit_every_algorithm_listed(signer: rsa.RSAPrivateKey) -> None:
    """The resolver-level guard against HS/RS confusion: a key must fit every algorithm listed."""
    cases: list[tuple[Any, list[str]]] = [
        (signer.public_key(), ["HS256"]),  # a public key object is not an HMAC secret
        (public_pem(signer), ["HS256"]),  # nor is its PEM text
        (HS_SECRET, ["RS256"]),  # and a secret is not a public key
        (public_pem(signer), ["RS256", "HS256"]),  # one resolver never mixes the two kinds
    ]
    for key, algorithms in cases:
        with pytest.raises(ConfigurationError):
            JWTClaimResolver(key=key, algorithms=algorithms)


@pytest.mark.parametrize(
    "options",
    [
        {"key": HS_SECRET, "algorithms": []},
        {"key": HS_SECRET, "algorithms": ["none"]},
        {"key": HS_SECRET, "algorithms": ["HS256", "NONE"]},
        {"key": HS_SECRET, "algorithms": ["HS999"]},
        {"algorithms": ["HS256"]},
        {"key": HS_SECRET, "jwks": {"keys": []}, "algorithms": ["HS256"]},
        {"jwks": {"keys": [{"kty": "nope"}]}, "algorithms": ["RS256"]},
    ],
)
def test_jwt_resolver_bad_configuration(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        JWTClaimResolver(**options)


# --- JWK Sets ---


def jwk(private_key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    return {
        **RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True),
        "kid": kid,
        "alg": "RS256",
        **extra,
    }


async def test_jwks_picks_the_key_the_token_names(
    signer: rsa.RSAPrivateKey, other_signer: rsa.RSAPrivateKey
) -> None:
    resolver = JWTClaimResolver(
        jwks={"keys": [jwk(signer, "k1"), jwk(other_signer, "k2")]}, algorithms=["RS256"]
    )
    assert await resolver(bearer(rs_token(claims(TENANT), other_signer, kid="k2"))) == TENANT
    for token in (
        rs_token(claims(TENANT), other_signer, kid="k1"),  # signed by another key than the one named
        rs_token(claims(TENANT), signer, kid="k3"),  # unknown key id
        rs_token(claims(TENANT), signer),  # no key id, two keys: ambiguous
    ):
        with pytest.raises(InvalidCredentialsError):
            await resolver(bearer(token))


async def test_jwks_from_sync_and_async_callables(signer: rsa.RSAPrivateKey) -> None:
    key_set = {"keys": [jwk(signer, "k1")]}

    async def fetch() -> jwt.PyJWKSet:
        return jwt.PyJWKSet.from_dict(key_set)

    token = rs_token(claims(TENANT), signer)  # no kid: the set's only key is used
    for source in (lambda: key_set, fetch):
        assert await JWTClaimResolver(jwks=source, algorithms=["RS256"])(bearer(token)) == TENANT


async def test_jwks_refuses_encryption_keys_and_algorithm_mismatches(signer: rsa.RSAPrivateKey) -> None:
    encryption_only = JWTClaimResolver(jwks={"keys": [jwk(signer, "k1", use="enc")]}, algorithms=["RS256"])
    with pytest.raises(InvalidCredentialsError):
        await encryption_only(bearer(rs_token(claims(TENANT), signer, kid="k1")))

    secret = {
        "kty": "oct",
        "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
        "kid": "s1",
        "alg": "HS256",
    }
    mixed = JWTClaimResolver(jwks={"keys": [jwk(signer, "k1"), secret]}, algorithms=["RS256", "RS384"])
    hs = jwt.encode(claims(TENANT), jwt.PyJWK(secret).key, algorithm="HS256", headers={"kid": "s1"})
    rs384 = jwt.encode(claims(TENANT), signer, algorithm="RS384", headers={"kid": "k1"})
    for token in (hs, rs384):  # HS256 is not allowed; k1 is bound to RS256
        with pytest.raises(InvalidCredentialsError):
            await mixed(bearer(token))


# --- the optional extra ---


@pytest.mark.parametrize(
    ("blocked", "statement"),
    [
        ("starlette", "import pgtenancy.asgi"),
        (
            "jwt",
            "from pgtenancy.asgi import JWTClaimResolver; JWTClaimResolver(key='k', algorithms=['HS256'])",
        ),
    ],
)
def test_missing_extra_is_named_in_the_import_error(blocked: str, statement: str) -> None:
    code = f"import sys; sys.modules[{blocked!r}] = None\n{statement}"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "pip install 'pgtenancy[asgi]'" in result.stderr
