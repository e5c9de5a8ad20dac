"""Every query pgtenancy sends to the PostgreSQL catalog, for migrations, role checks and the audit.

- ``tables``: one table at a time, by name (RLS flags, policies, privileges, indexes, columns, roles),
  for the migration operations and autogenerate; its readers are re-exported here;
- ``roles``: what the connected role is, for the engine's role check;
- ``snapshot``: one read of the whole catalog as the audit judges it;
- ``inserts``: what the audit's probes need to insert a valid row into any table.
"""

from __future__ import annotations

from pgtenancy.catalog.tables import (
    AccessGap,
    PolicyInfo,
    RoleInfo,
    SchemaMismatchError,
    TableSecurity,
    column_type,
    indexes_leading_with,
    missing_access,
    owned_sequences,
    role_info,
    sequence_privileges,
    table_policies,
    table_privileges,
    table_security,
)

__all__ = [
    "AccessGap",
    "PolicyInfo",
    "RoleInfo",
    "SchemaMismatchError",
    "TableSecurity",
    "column_type",
    "indexes_leading_with",
    "missing_access",
    "owned_sequences",
    "role_info",
    "sequence_privileges",
    "table_policies",
    "table_privileges",
    "table_security",
]
