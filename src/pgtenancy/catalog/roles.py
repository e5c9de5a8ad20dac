"""What the connected role is: the facts the role check needs, in one query any connection can run.

Plain SQL text rather than a SQLAlchemy construct, because the engine's pool ``connect`` hook runs it on
a raw DBAPI connection before SQLAlchemy uses that connection.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CURRENT_ROLE_SQL"]

CURRENT_ROLE_SQL: Final = """
    SELECT r.rolname, r.rolsuper, r.rolbypassrls,
           ARRAY(SELECT c.oid::regclass::text
                   FROM pg_catalog.pg_class c
                  WHERE c.relrowsecurity AND NOT c.relforcerowsecurity
                    AND pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE')
                  ORDER BY 1) AS unforced_owned,
           ARRAY(SELECT m.rolname::text
                   FROM pg_catalog.pg_roles m
                  WHERE (m.rolsuper OR m.rolbypassrls) AND m.oid <> r.oid
                    AND pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER')
                  ORDER BY 1) AS bypassing_memberships
      FROM pg_catalog.pg_roles r
     WHERE r.rolname = current_user
"""
