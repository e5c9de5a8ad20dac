"""Assertions for a user's own test suite: a table is isolated between tenants, an audit finds nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import URL, Connection, Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pgtenancy.audit import audit, audit_engine
from pgtenancy.audit.findings import Finding
from pgtenancy.audit.probes import Target, probe_table
from pgtenancy.audit.sealing import SealKey, table_verifiers
from pgtenancy.catalog import table_security
from pgtenancy.catalog.snapshot import read_snapshot
from pgtenancy.config import DEFAULT_SETTING, validate_setting_name, validate_tenant_id
from pgtenancy.errors import ConfigurationError
from pgtenancy.roles import role_problems
from pgtenancy.seal import Seal, hmac_pads

__all__ = ["assert_no_findings", "assert_tenant_isolated"]


def assert_tenant_isolated(
    engine_or_url: str | URL | Engine | AsyncEngine,
    table: str,
    tenants: Iterable[object],
    *,
    column: str = "tenant_id",
    key_type: str = "uuid",
    setting: str = DEFAULT_SETTING,
    seal: Seal | None = None,
) -> None:
    """Assert that, as the connection's role, no tenant reaches another tenant's rows of ``table``.

    With each tenant bound it reads, inserts, updates and deletes rows of the next tenant (and TRUNCATEs
    when granted); with no tenant bound it reads and inserts. Probe rows are inserted where a tenant has
    none. Everything runs in a transaction that is rolled back.

    :param engine_or_url: the application's engine or URL: the role under test is its user.
    :param table: ``name`` or ``schema.name`` (resolved with the connection's search_path).
    :param tenants: at least two tenant ids of ``key_type``.
    :param seal: for a table sealed by ``op.seal_tenant_isolation``, the application's ``Seal``: each
        bound tenant is sealed with it, and re-pointing the setting without a seal must show no rows.
        A sealed table without it cannot be proven (the probes would see nothing at all).
    """
    validate_setting_name(setting)
    chosen = [validate_tenant_id(t, key_type) for t in tenants]
    if len(set(chosen)) < 2:
        raise ConfigurationError("assert_tenant_isolated needs at least two distinct tenants")
    engine = audit_engine(engine_or_url)
    try:
        with engine.connect() as conn:
            with conn.begin() as transaction:
                problems = role_problems(conn)
                target, truncate, seals = _target(conn, table, column, setting, seal)
                transaction.rollback()
            if problems:
                raise AssertionError(
                    "cannot prove isolation of "
                    + table
                    + ": "
                    + "; ".join(problems)
                    + " (RLS does not bind this role: connect as the application's role)"
                )
            outcome = probe_table(
                conn,
                target,
                setting=setting,
                app_role=None,
                auditor_bypasses=False,
                tenants=chosen,
                truncate=truncate,
                seals=seals,
                check_seal=bool(seals),
            )
    finally:
        engine.dispose()
    if outcome.leaks:
        details = "\n".join(
            f"- {leak.rule}: {leak.message}\n{_indent(leak.reproduction)}" for leak in outcome.leaks
        )
        raise AssertionError(f"{table} is not isolated between tenants:\n{details}")
    if outcome.undecided:
        raise AssertionError(
            f"cannot prove {table} isolated: probes could not run:\n"
            + "\n".join("- " + reason for reason in outcome.undecided)
        )


def _target(
    conn: Connection, table: str, column: str, setting: str, seal: Seal | None
) -> tuple[Target, bool, tuple[SealKey, ...]]:
    """The probe target for ``table``, whether the role may TRUNCATE it, and the keys to seal it with."""
    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigurationError(f"invalid table name {table!r}: use 'name' or 'schema.name'")
    found = table_security(conn, parts[-1], parts[0] if len(parts) == 2 else None)
    if found is None:
        raise ConfigurationError(f"table {table!r} does not exist (or is not on the search_path)")
    role = conn.execute(text("SELECT current_user")).scalar_one()
    snapshot = read_snapshot(conn, role=role, setting=setting, schemas=[found.schema], column=column)
    relation = next(r for r in snapshot.relations.values() if r.name == found.name)
    if not relation.isolated:
        raise ConfigurationError(f"table {table!r} has no tenant column {column!r}")
    target = Target.of(relation)
    if target is None:
        raise ConfigurationError(
            f"cannot make up tenant ids for {table!r}: its tenant column is neither uuid, integer nor text"
        )
    verifiers = table_verifiers(snapshot, relation)
    if verifiers and seal is None:
        raise AssertionError(
            f"cannot prove {table} isolated: its policies are sealed, and unsealed probes see no rows at "
            "all; pass seal= the application's Seal"
        )
    pads = hmac_pads(seal.current_key()) if seal is not None else (b"", b"")
    keys = tuple(SealKey(verifier.seal_setting, seal.key_id, *pads) for verifier in verifiers if seal)
    return target, "TRUNCATE" in relation.app_privileges, keys


def _indent(block: str) -> str:
    return "\n".join("    " + line for line in block.splitlines())


def assert_no_findings(
    url: str | URL | Engine | AsyncEngine,
    *,
    role: str | None = None,
    setting: str = DEFAULT_SETTING,
    schemas: Sequence[str] = ("public",),
    column: str = "tenant_id",
    dynamic: bool = True,
    ignore: Iterable[str] = (),
    sealed: bool = False,
) -> None:
    """Assert that ``pgtenancy check`` finds no error or warning (rules in ``ignore`` excepted).

    :param url: best a superuser URL, with ``role`` the application's role (see ``pgtenancy.audit``).
    :param sealed: sealing is declared (``pgtenancy check --sealed``): every tenant table must be sealed.
    """
    skipped = set(ignore)
    report = audit(
        url, role=role, setting=setting, schemas=schemas, dynamic=dynamic, column=column, sealed=sealed
    )
    failing = [f for f in report.failing if f.rule not in skipped]
    if failing:
        raise AssertionError(
            f"pgtenancy check found {len(failing)} problem(s):\n" + "\n".join(_describe(f) for f in failing)
        )


def _describe(finding: Finding) -> str:
    line = f"- {finding.rule} {finding.severity} {finding.object}: {finding.message}"
    if finding.fix:
        line += "\n    fix: " + finding.fix
    return line
