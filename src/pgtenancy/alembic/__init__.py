"""Alembic integration (needs the ``alembic`` extra): ``import pgtenancy.alembic`` in ``env.py``.

Importing this package registers pgtenancy's operations on Alembic's ``op`` (``enable_tenant_isolation``,
``disable_tenant_isolation``, ``create_tenant_role``, ``drop_tenant_role``, ``grant_tenant_access``,
``revoke_tenant_access``, ``revoke_temporary_tables``, ``grant_temporary_tables``, and for Citus
``distribute_tenant_table``, ``create_reference_table``, ``undistribute_table``; the sealing operations
of ``pgtenancy.alembic.seal``), their renderers for autogenerate, and the comparator that proposes
``enable_tenant_isolation`` for every marked model table whose live isolation is missing or differs
(a sealed policy counts as declared), ``grant_tenant_access`` for the app roles of
``context.configure(pgtenancy_app_roles=[...])`` on tables they cannot fully use, and, in a Citus
database, ``distribute_tenant_table`` for marked tables that are not distributed.
"""

from __future__ import annotations

try:
    import alembic  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("pgtenancy.alembic needs Alembic: pip install 'pgtenancy[alembic]'") from exc

from pgtenancy.alembic import compare, render, seal, toimpl
from pgtenancy.alembic.ops import (
    CreateReferenceTableOp,
    CreateTenantRoleOp,
    DisableTenantIsolationOp,
    DistributeTenantTableOp,
    DropTenantRoleOp,
    EnableTenantIsolationOp,
    GrantTemporaryTablesOp,
    GrantTenantAccessOp,
    IsolationSpec,
    RevokeTemporaryTablesOp,
    RevokeTenantAccessOp,
    UndistributeTableOp,
    create_reference_table,
    create_tenant_role,
    disable_tenant_isolation,
    distribute_tenant_table,
    drop_tenant_role,
    enable_tenant_isolation,
    grant_temporary_tables,
    grant_tenant_access,
    revoke_temporary_tables,
    revoke_tenant_access,
    undistribute_table,
)

__all__ = [
    "CreateReferenceTableOp",
    "CreateTenantRoleOp",
    "DisableTenantIsolationOp",
    "DistributeTenantTableOp",
    "DropTenantRoleOp",
    "EnableTenantIsolationOp",
    "GrantTemporaryTablesOp",
    "GrantTenantAccessOp",
    "IsolationSpec",
    "RevokeTemporaryTablesOp",
    "RevokeTenantAccessOp",
    "UndistributeTableOp",
    "compare",
    "create_reference_table",
    "create_tenant_role",
    "disable_tenant_isolation",
    "distribute_tenant_table",
    "drop_tenant_role",
    "enable_tenant_isolation",
    "grant_temporary_tables",
    "grant_tenant_access",
    "render",
    "revoke_temporary_tables",
    "revoke_tenant_access",
    "seal",
    "toimpl",
    "undistribute_table",
]
