"""Holes in the roles: what the app role is, what it is a member of, and the settings it starts with."""

from __future__ import annotations

from tests.audit_corpus.case import (
    TENANT_A,
    Case,
    Hole,
    NotExploited,
    attempt,
    leaked,
)
from tests.audit_corpus.policies import read_after_a_committed, read_as_a

FAMILY = "roles"
ROLE = ("role {app}",)


def role_default_tenant(case: Case) -> None:
    case.tenant_table()
    case.sql("ALTER ROLE {app} SET app.current_tenant_id = '{b}'", as_owner=False)


def database_default_tenant(case: Case) -> None:
    case.tenant_table()
    case.sql("ALTER DATABASE {db} SET app.current_tenant_id = '{b}'", as_owner=False)


def bypassrls(case: Case) -> None:
    case.tenant_table()
    case.sql("ALTER ROLE {app} BYPASSRLS", as_owner=False)


def member_of_bypassrls(case: Case) -> None:
    case.tenant_table()
    case.names["ops"] = case.role("NOLOGIN BYPASSRLS")
    case.sql("GRANT SELECT ON {s}.t TO {ops}; GRANT {ops} TO {app}", as_owner=False)


def exploit_set_role_ops(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        conn.exec_driver_sql(case.fill("SET LOCAL ROLE {ops}"))
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def read_all_data(case: Case) -> None:
    # a reporting snapshot only the reporting role may read; pg_read_all_data reads it too
    case.tenant_table()
    case.names["reporting"] = case.role("NOLOGIN BYPASSRLS")
    case.sql(
        "CREATE MATERIALIZED VIEW {s}.totals AS SELECT tenant_id, body FROM {s}.t;"
        "GRANT SELECT ON {s}.totals TO {reporting}; GRANT pg_read_all_data TO {app}",
        as_owner=False,
    )


def exploit_read_all_data(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.totals")))


def createrole(case: Case) -> None:
    # the app role made the reporting role at bootstrap (CREATEROLE); an operator later gave it BYPASSRLS
    case.tenant_table()
    case.sql("ALTER ROLE {app} CREATEROLE", as_owner=False)
    reporting = "pgt_c_rep_" + case.schema[-6:]
    case.names["reporting"] = reporting
    with case.admin.begin() as conn:
        conn.exec_driver_sql(case.fill("SET LOCAL ROLE {app}"))
        conn.exec_driver_sql(case.fill("CREATE ROLE {reporting} NOLOGIN"))
    case.extra_roles.append(reporting)
    case.sql(
        "ALTER ROLE {reporting} BYPASSRLS; GRANT USAGE ON SCHEMA {s} TO {reporting};"
        "GRANT SELECT ON {s}.t TO {reporting}",
        as_owner=False,
    )


def exploit_createrole(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        granted = attempt(conn, case.fill("GRANT {reporting} TO {app}"))
        if isinstance(granted, str):
            raise NotExploited(granted)
        conn.exec_driver_sql(case.fill("SET LOCAL ROLE {reporting}"))
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def member_of_owner_chain(case: Case) -> None:
    case.tenant_table()
    case.names["team"] = case.role()
    case.sql("GRANT {owner} TO {team}; GRANT {team} TO {app}", as_owner=False)


def exploit_member_of_owner_chain(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        switched = attempt(conn, case.fill("ALTER TABLE {s}.t DISABLE ROW LEVEL SECURITY"))
        if isinstance(switched, str):
            raise NotExploited(switched)
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def lo_compat_privileges(case: Case) -> None:
    # uploads are large objects owned by the owner role, listed in an isolated table
    case.tenant_table("attachment", columns="blob oid NOT NULL", seed=False)
    case.seed_secrets("attachment", ", blob", ", lo_from_bytea(0, convert_to(:body, 'UTF8'))")
    case.on_close.append("SELECT lo_unlink(blob) FROM {s}.attachment")
    case.sql("ALTER ROLE {app} SET lo_compat_privileges = on", as_owner=False)


def exploit_large_objects(case: Case) -> str:
    """Large object oids are public (pg_largeobject_metadata); read each one that lets us."""
    with case.as_tenant(TENANT_A) as conn:
        found = []
        oids = conn.exec_driver_sql("SELECT oid FROM pg_largeobject_metadata ORDER BY oid").scalars().all()
        for oid in oids:
            content = attempt(conn, "SELECT convert_from(lo_get(:oid), 'UTF8')", {"oid": oid})
            if not isinstance(content, str):
                found.append(content[0][0])
        return leaked(found)


HOLES = [
    Hole(
        "role_default_tenant",
        FAMILY,
        "ALTER ROLE app SET app.current_tenant_id = B: every transaction that binds nothing is B's",
        role_default_tenant,
        read_after_a_committed,
        ROLE,
    ),
    Hole(
        "database_default_tenant",
        FAMILY,
        "ALTER DATABASE ... SET app.current_tenant_id = B: every unbound transaction is B's",
        database_default_tenant,
        read_after_a_committed,
        ("database {db}",),
        own_database=True,
    ),
    Hole("bypassrls", FAMILY, "the app role has BYPASSRLS", bypassrls, read_as_a, ROLE),
    Hole(
        "member_of_bypassrls",
        FAMILY,
        "the app role is a member of a BYPASSRLS ops role: SET ROLE ops reads every tenant",
        member_of_bypassrls,
        exploit_set_role_ops,
        ROLE,
    ),
    Hole(
        "pg_read_all_data",
        FAMILY,
        "the app role holds pg_read_all_data: it reads the reporting snapshot of every tenant",
        read_all_data,
        exploit_read_all_data,
        ROLE,
    ),
    Hole(
        "createrole",
        FAMILY,
        "the app role has CREATEROLE and ADMIN on a BYPASSRLS role it created: it grants it to itself",
        createrole,
        exploit_createrole,
        ROLE,
    ),
    Hole(
        "member_of_owner_chain",
        FAMILY,
        "app -> team -> owner: through two grants the app role owns the table and turns RLS off",
        member_of_owner_chain,
        exploit_member_of_owner_chain,
        ("role {app}", "table {s}.t"),
    ),
    Hole(
        "lo_compat_privileges",
        FAMILY,
        "ALTER ROLE app SET lo_compat_privileges = on: every tenant's large objects are readable",
        lo_compat_privileges,
        exploit_large_objects,
        ROLE,
    ),
]
