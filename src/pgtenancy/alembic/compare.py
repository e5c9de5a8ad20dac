"""The autogenerate comparator: marked tables get isolation enabled and the app roles their grants.

A table is *marked* when one of its columns carries ``pgtenancy.orm.TENANT_INFO_KEY`` in ``.info``
(``TenantMixin`` / ``tenant_column``). For each marked table the live catalog must show RLS enabled
and forced and pgtenancy's policy with the expected expressions; the expected policy is created on the
live table inside a SAVEPOINT, read back through ``pg_get_expr`` and rolled back, so PostgreSQL's
own normal form is compared with itself. Tables that are not marked are never touched.

The app roles named by ``context.configure(pgtenancy_app_roles=[...])`` in ``env.py`` get
``grant_tenant_access`` on every marked table whose privileges they cannot all use yet (each new table
among them), so a new tenant table does not fail closed with "permission denied" at run time.

In a database with the Citus extension the expected policy is the unwrapped form Citus accepts, and a
marked table that is still a plain table also gets ``distribute_tenant_table`` by its tenant column.
A policy sealed by ``seal_tenant_isolation`` counts as declared (the seal schema is
``context.configure(pgtenancy_seal_schema=...)``, ``pgtenancy_seal`` by default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Final

from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.compare import comparators
from alembic.operations.ops import UpgradeOps
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import Connection, Table, text
from sqlalchemy.exc import DBAPIError

from pgtenancy import citus, seal_sql
from pgtenancy.alembic.ops import (
    DistributeTenantTableOp,
    EnableTenantIsolationOp,
    GrantTenantAccessOp,
    IsolationSpec,
)
from pgtenancy.catalog import PolicyInfo, missing_access, role_info, table_policies, table_security
from pgtenancy.config import DEFAULT_SETTING
from pgtenancy.ddl import (
    DML_PRIVILEGES,
    MANAGED_PREFIX,
    POLICY_NAME,
    CreateTenantPolicy,
    validate_role_name,
)
from pgtenancy.errors import ConfigurationError
from pgtenancy.orm import TENANT_INFO_KEY

__all__ = [
    "APP_ROLES_OPTION",
    "SEAL_SCHEMA_OPTION",
    "app_roles",
    "compare_tenant_isolation",
    "distribution_op",
    "grant_ops",
    "isolation_problems",
    "tenant_spec",
]

log = logging.getLogger(__name__)

_PROBE_POLICY = MANAGED_PREFIX + "expected_policy_probe"

APP_ROLES_OPTION: Final = "pgtenancy_app_roles"  # the context.configure() keyword naming the app roles
SEAL_SCHEMA_OPTION: Final = "pgtenancy_seal_schema"  # the keyword naming the seal schema, if not the default
_GRANTED: Final = tuple(DML_PRIVILEGES.split(", "))  # the table privileges grant_tenant_access gives


def tenant_spec(table: Table) -> IsolationSpec | None:
    """The isolation a model table declares through its marked tenant column, or ``None`` if unmarked."""
    marked = [column for column in table.columns if TENANT_INFO_KEY in column.info]
    if not marked:
        return None
    if len(marked) > 1:
        names = ", ".join(column.name for column in marked)
        raise ConfigurationError(f"table {table.fullname!r} marks several tenant columns ({names}): keep one")
    info = marked[0].info[TENANT_INFO_KEY]
    return IsolationSpec(
        table.name,
        marked[0].name,
        table.schema,
        key_type=info.get("key_type", "uuid"),
        setting=info.get("setting", DEFAULT_SETTING),
        citus=info.get("citus", False),
    )


def _expected_policy(conn: Connection, spec: IsolationSpec) -> PolicyInfo | None:
    """The policy ``spec`` would create, as the catalog prints it, or ``None`` if it cannot be created."""
    try:
        with conn.begin_nested() as savepoint:
            conn.execute(
                CreateTenantPolicy(
                    spec.table,
                    spec.column,
                    spec.schema,
                    key_type=spec.key_type,
                    setting=spec.setting,
                    citus=spec.citus,
                    name=_PROBE_POLICY,
                )
            )
            probe = next(p for p in table_policies(conn, spec.table, spec.schema) if p.name == _PROBE_POLICY)
            savepoint.rollback()
    except DBAPIError as exc:
        log.warning("pgtenancy: cannot build the expected policy on %s: %s", spec.qualified_name, exc.orig)
        return None
    return probe


def _sealed_policy(conn: Connection, spec: IsolationSpec, seal_schema: str) -> PolicyInfo | None:
    """pgtenancy's policy as ``seal_tenant_isolation`` leaves it, as the catalog prints it; ``None`` when
    the verifier of ``seal_schema`` does not exist (the policy is altered in a SAVEPOINT, rolled back)."""
    verifier = seal_sql.verifier_name(seal_schema) + "()"
    if conn.execute(text("SELECT pg_catalog.to_regprocedure(:name)"), {"name": verifier}).scalar() is None:
        return None
    statements = seal_sql.policy_statements(
        spec.table, spec.column, spec.schema, key_type=spec.key_type, sealed=True, seal_schema=seal_schema
    )
    with conn.begin_nested() as savepoint:
        for statement in statements:
            conn.execute(statement)
        sealed = next(p for p in table_policies(conn, spec.table, spec.schema) if p.name == POLICY_NAME)
        savepoint.rollback()
    return sealed


def _same(actual: PolicyInfo, expected: PolicyInfo | None) -> bool:
    return expected is not None and (
        actual.permissive,
        actual.command,
        actual.roles,
        actual.using,
        actual.with_check,
    ) == (expected.permissive, expected.command, expected.roles, expected.using, expected.with_check)


def isolation_problems(
    conn: Connection, spec: IsolationSpec, *, seal_schema: str = seal_sql.DEFAULT_SEAL_SCHEMA
) -> list[str]:
    """Every way the live table falls short of ``spec`` (empty when it is isolated as declared).

    A policy sealed by ``seal_tenant_isolation`` with the verifier of ``seal_schema`` is as declared too:
    sealing only narrows it, and proposing the plain policy would silently undo the seal.
    """
    security = table_security(conn, spec.table, spec.schema)
    if security is None:
        return ["table does not exist yet"]
    problems = []
    if not security.rls_enabled:
        problems.append("row level security is disabled")
    if not security.rls_forced:
        problems.append("row level security is not forced")
    actual = next((p for p in table_policies(conn, spec.table, spec.schema) if p.name == POLICY_NAME), None)
    if actual is None:
        problems.append(f"policy {POLICY_NAME} is missing")
        return problems
    expected = _expected_policy(conn, spec)
    if expected is None:
        problems.append("the expected policy cannot be created on the live table")
    elif not _same(actual, expected) and (
        spec.citus or not _same(actual, _sealed_policy(conn, spec, seal_schema))
    ):
        problems.append(f"policy {POLICY_NAME} differs: {actual.using!r} instead of {expected.using!r}")
    return problems


def distribution_op(conn: Connection, spec: IsolationSpec) -> DistributeTenantTableOp | None:
    """``distribute_tenant_table`` for a table Citus does not hold yet (call only with Citus present).

    A table Citus already holds another way (another column, a reference table) is left as it is,
    with a warning: moving its rows is a decision for a hand-written revision.
    """
    exists = table_security(conn, spec.table, spec.schema) is not None  # or made in the same revision
    current = citus.distribution_of(conn, spec.table, schema=spec.schema) if exists else None
    if current is None:
        return DistributeTenantTableOp(spec.table, spec.column, schema=spec.schema)
    if current != citus.Distribution("distributed", spec.column):
        log.warning(
            "pgtenancy: %s is a Citus %s table, not distributed by %r: undistribute it in a revision "
            "written by hand, then distribute it by its tenant column",
            spec.qualified_name,
            current.kind,
            spec.column,
        )
    return None


def app_roles(opts: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The roles named by ``pgtenancy_app_roles`` in the migration context's options; ``None`` if unset."""
    roles = opts.get(APP_ROLES_OPTION)
    if roles is None:
        return None
    if isinstance(roles, str) or not isinstance(roles, Iterable):
        raise ConfigurationError(
            f"{APP_ROLES_OPTION} takes a list of role names, e.g. {APP_ROLES_OPTION}=[{roles!r}], "
            f"not {roles!r}"
        )
    return tuple(validate_role_name(role) for role in roles)


def _existing_roles(conn: Connection, opts: Mapping[str, Any]) -> tuple[str, ...]:
    """The configured app roles that exist, with a warning for no configuration and for each unknown role."""
    roles = app_roles(opts)
    if roles is None:
        log.warning(
            "pgtenancy: no app role configured, so autogenerate proposes no grant_tenant_access and new "
            "tenant tables will refuse the app ('permission denied'): pass %s=['app'] to "
            "context.configure() in env.py (%s=[] if you grant access by hand)",
            APP_ROLES_OPTION,
            APP_ROLES_OPTION,
        )
        return ()
    missing = [role for role in roles if role_info(conn, role) is None]
    for role in missing:
        log.warning(
            "pgtenancy: app role %r (%s) does not exist, so autogenerate proposes no grants for it: "
            "create it first (op.create_tenant_role in a revision, then upgrade) or correct the name",
            role,
            APP_ROLES_OPTION,
        )
    return tuple(role for role in roles if role not in missing)


def grant_ops(conn: Connection, spec: IsolationSpec, roles: Iterable[str]) -> list[GrantTenantAccessOp]:
    """``grant_tenant_access`` for each role lacking part of what it grants on the table, or if it is new."""
    exists = table_security(conn, spec.table, spec.schema) is not None  # or made in the same revision
    ops = []
    for role in roles:
        if exists:
            gap = missing_access(conn, role, spec.table, _GRANTED, spec.schema)
            if gap is None or gap.complete:
                continue
            lacking = ", ".join(gap.privileges + tuple("USAGE ON " + sequence for sequence in gap.sequences))
            log.info("Detected tenant access to grant to %r on %r: %s", role, spec.qualified_name, lacking)
        else:
            log.info("Detected tenant access to grant to %r on new table %r", role, spec.qualified_name)
        ops.append(GrantTenantAccessOp(role, spec.table, schema=spec.schema))
    return ops


@comparators.dispatch_for("schema", qualifier="postgresql", priority=DispatchPriority.LAST)
def compare_tenant_isolation(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: set[str | None]
) -> PriorityDispatchResult:
    """Append ``enable_tenant_isolation`` for every marked table whose live isolation falls short.

    Runs after Alembic's table comparison, so the operation follows a ``create_table`` or
    ``add_column`` of the same revision. With Citus, ``distribute_tenant_table`` follows it for tables
    not distributed yet (parents before children: the tables come in dependency order). Last come the
    ``grant_tenant_access`` operations for the configured app roles.
    """
    conn = autogen_context.connection
    if conn is None:
        return PriorityDispatchResult.CONTINUE
    specs = []
    for table in autogen_context.sorted_tables:
        spec = tenant_spec(table)
        if spec is None or table.schema not in schemas:
            continue
        if autogen_context.run_object_filters(table, table.name, "table", False, None):
            specs.append(spec)
    if not specs:
        return PriorityDispatchResult.CONTINUE
    with_citus = citus.citus_version(conn) is not None
    roles = _existing_roles(conn, autogen_context.opts)
    seal_schema = autogen_context.opts.get(SEAL_SCHEMA_OPTION, seal_sql.DEFAULT_SEAL_SCHEMA)
    for spec in specs:
        if with_citus:
            spec = replace(spec, citus=True)  # Citus refuses the (SELECT ...) policy on its tables
        problems = isolation_problems(conn, spec, seal_schema=seal_schema)
        if problems:
            log.info(
                "Detected tenant isolation to enable on %r: %s", spec.qualified_name, "; ".join(problems)
            )
            upgrade_ops.ops.append(EnableTenantIsolationOp(spec))
        distribute = distribution_op(conn, spec) if with_citus else None
        if distribute is not None:
            log.info("Detected tenant table to distribute on %r", spec.qualified_name)
            upgrade_ops.ops.append(distribute)
        upgrade_ops.ops.extend(grant_ops(conn, spec, roles))
    return PriorityDispatchResult.CONTINUE
