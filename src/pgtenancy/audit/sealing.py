"""Sealed setups as the audit sees them: which verifiers are pgtenancy's, which tables they seal, and the
key the probes sign with.

A verifier is trusted only when its body is, character for character, what ``create_tenant_seal`` writes
for its schema and settings: a function of the same name with any other body is just a function.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Engine, column, select, table
from sqlalchemy.exc import DBAPIError

from pgtenancy import seal_sql
from pgtenancy.catalog.seal import SealSchema
from pgtenancy.catalog.snapshot import Relation, Snapshot
from pgtenancy.errors import ConfigurationError
from pgtenancy.seal import seal_value_from_pads

__all__ = [
    "PINNED_SEARCH_PATH",
    "SealKey",
    "SealVerifier",
    "read_key",
    "sealed_names",
    "table_verifiers",
    "trusted_verifiers",
    "verifier_settings",
]

PINNED_SEARCH_PATH: Final = "search_path=pg_catalog, pg_temp"  # proconfig of the verifier as created
_DECLARED = re.compile(
    r"^  (tenant|seal) text := coalesce\(current_setting\('([^'\\]*)', true\), ''\);$", re.M
)


@dataclass(frozen=True)
class SealVerifier:
    """A verifier the audit trusts: pgtenancy's ``<schema>.current_tenant()`` for the audited setting."""

    schema: SealSchema
    seal_setting: str

    @property
    def call_name(self) -> str:
        """The name a policy expression calls it by, as the analysis reads names (lower case)."""
        return (self.schema.name + "." + seal_sql.VERIFIER).lower()


@functools.lru_cache(maxsize=64)
def verifier_settings(schema: SealSchema) -> tuple[str, str] | None:
    """(tenant setting, seal setting) when the schema's verifier is exactly what ``create_tenant_seal``
    writes for them (body, language, return type); None for any other function or none."""
    verifier = schema.verifier
    if verifier is None or verifier.language != "plpgsql" or not verifier.returns_text:
        return None
    declared = {match[1]: match[2] for match in _DECLARED.finditer(verifier.body)}
    if set(declared) != {"tenant", "seal"}:
        return None
    try:
        statements = seal_sql.create_seal_statements(
            schema.name, setting=declared["tenant"], seal_setting=declared["seal"]
        )
    except (ConfigurationError, ValueError):
        return None
    head = "CREATE OR REPLACE FUNCTION " + seal_sql.verifier_name(schema.name) + "()"
    created = next(
        s.sql for s in statements if isinstance(s, seal_sql.SealStatement) and s.sql.startswith(head)
    )
    tag = created.rsplit("\n", 1)[1]  # the dollar quote closing the body
    return (declared["tenant"], declared["seal"]) if created.split(tag)[1] == verifier.body else None


def trusted_verifiers(snapshot: Snapshot) -> tuple[SealVerifier, ...]:
    """The verifiers that are pgtenancy's and verify the audited tenant setting."""
    found = []
    for schema in snapshot.seal.schemas:
        settings = verifier_settings(schema)
        if settings is not None and settings[0] == snapshot.setting:
            found.append(SealVerifier(schema, settings[1]))
    return tuple(found)


def sealed_names(snapshot: Snapshot) -> tuple[str, ...]:
    """The names of the trusted verifiers, for the expression analysis."""
    return tuple(verifier.call_name for verifier in trusted_verifiers(snapshot))


def table_verifiers(snapshot: Snapshot, relation: Relation) -> tuple[SealVerifier, ...]:
    """The trusted verifiers that the policies applying to the app role on ``relation`` call."""
    called = {oid for policy in relation.policies if policy.applies_to_app for oid in policy.functions}
    return tuple(
        v for v in trusted_verifiers(snapshot) if v.schema.verifier and v.schema.verifier.oid in called
    )


@dataclass(frozen=True)
class SealKey:
    """One key of a seal schema, as HMAC pads: enough to sign seals its verifier accepts."""

    setting: str  # the seal setting the verifier reads
    key_id: str
    inner_pad: bytes = field(repr=False)
    outer_pad: bytes = field(repr=False)

    def sign(self, tenant: str, backend_pid: int, expires: int) -> str:
        """A seal of ``tenant`` for backend ``backend_pid``, valid until ``expires`` (server epoch)."""
        return seal_value_from_pads(self.inner_pad, self.outer_pad, self.key_id, tenant, backend_pid, expires)


def read_key(engine: Engine, verifier: SealVerifier) -> SealKey | str:
    """The newest key of the verifier's key table, read as the engine's role; else why it cannot be read."""
    keys = table(
        "keys",
        column("key_id"),
        column("inner_pad"),
        column("outer_pad"),
        column("added_at"),
        schema=verifier.schema.name,
    )
    newest = select(keys.c.key_id, keys.c.inner_pad, keys.c.outer_pad).order_by(
        keys.c.added_at.desc(), keys.c.key_id
    )
    try:
        with engine.connect() as conn:
            row = conn.execute(newest.limit(1)).first()
    except DBAPIError as error:
        lines = str(error.orig or error).strip().splitlines()
        return f"the auditing role cannot read {verifier.schema.keys} ({lines[0] if lines else error})"
    if row is None:
        return f"{verifier.schema.keys} holds no key, so no seal verifies and sealed sessions see no rows"
    return SealKey(verifier.seal_setting, row[0], bytes(row[1]), bytes(row[2]))
