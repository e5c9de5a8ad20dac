"""Audit a live database for holes between tenants: static catalog rules plus dynamic probes.

Connect as a superuser (or a BYPASSRLS role that is a member of the app role) and name the app
role: the audit then reads every tenant's rows to pick real tenants for the probes and switches to
the app role with SET ROLE to run them. Connected as the app role itself, the probes insert their own
rows instead. Every probe runs in a transaction that is rolled back (sequences that probe inserts
draw from may advance, as with any rolled-back insert).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from pgtenancy.audit import exposure, seal_rules  # noqa: F401 - register their rules into RULES
from pgtenancy.audit.findings import Finding, Report, Rule
from pgtenancy.audit.probes import PROBE_RULES, run_probes
from pgtenancy.audit.rules import RULES, run_rules
from pgtenancy.catalog.snapshot import Snapshot, read_snapshot
from pgtenancy.config import DEFAULT_SETTING, validate_setting_name
from pgtenancy.errors import ConfigurationError

__all__ = ["PROBE_RULES", "RULES", "Finding", "Report", "Rule", "audit", "audit_engine"]


def audit(
    url_or_engine: str | URL | Engine | AsyncEngine,
    *,
    role: str | None = None,
    setting: str = DEFAULT_SETTING,
    schemas: Sequence[str] = ("public",),
    dynamic: bool = True,
    column: str = "tenant_id",
    admin_roles: Sequence[str] = (),
    sealed: bool = False,
) -> Report:
    """Audit the database at ``url_or_engine`` for the application role ``role``.

    :param role: the role the application connects as; default: the connection's own user.
    :param setting: the custom setting that carries the tenant id.
    :param schemas: the schemas whose tables, views and materialized views are audited.
    :param dynamic: also run the probes (as ``role``, in transactions that are rolled back).
    :param column: the tenant column's name; tables that have it are tenant tables.
    :param admin_roles: roles of admin tools that bypass row-level security by design; each must exist.
    :param sealed: sealing is declared: every tenant table the app role reaches must be sealed.
    """
    validate_setting_name(setting)
    engine = audit_engine(url_or_engine)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            auditor = conn.execute(text("SELECT current_user")).scalar_one()
            snapshot = read_snapshot(
                conn, role=role or auditor, setting=setting, schemas=schemas, column=column
            )
            transaction.rollback()
        _check_roles_exist(snapshot, admin_roles)
        snapshot = replace(snapshot, admin_roles=frozenset(admin_roles), sealing_declared=sealed)
        findings = run_rules(snapshot)
        if dynamic:
            findings += run_probes(engine, snapshot, auditor=auditor)
    finally:
        engine.dispose()
    return Report.build(
        findings,
        role=snapshot.app.name,
        setting=setting,
        schemas=list(schemas),
        tenant_tables=len(snapshot.isolated_tables()),
        dynamic=dynamic,
        citus=snapshot.citus_tables is not None,
        admin_roles=list(admin_roles),
        sealed=sealed,
    )


def _check_roles_exist(snapshot: Snapshot, names: Sequence[str]) -> None:
    """Raise ``ConfigurationError`` naming every role in ``names`` that the server does not have."""
    known = {role.name for role in snapshot.roles.values()}
    missing = [name for name in names if name not in known]
    if missing:
        raise ConfigurationError(
            f"admin role(s) {', '.join(map(repr, missing))} do not exist: name roles of the admin tools"
        )


def audit_engine(url_or_engine: str | URL | Engine | AsyncEngine) -> Engine:
    """A fresh, unpooled, un-instrumented sync engine on the same database and user, with psycopg 3 (the
    probes send several statements in one message and read each result: ``pgtenancy[cli]`` installs it)."""
    if isinstance(url_or_engine, AsyncEngine):
        url = url_or_engine.sync_engine.url
    elif isinstance(url_or_engine, Engine):
        url = url_or_engine.url
    else:
        url = make_url(url_or_engine)
    if url.drivername.partition("+")[0] in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url, poolclass=NullPool)
