"""Static rules for holes around the tables: foreign tables, sequences, large objects, roles, stored
defaults, search paths, triggers, exclusion constraints and temporary tables.

Each registers into the same ``RULES`` as the table and policy rules (import this module to register).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from sqlalchemy import String, literal
from sqlalchemy.dialects import postgresql

from pgtenancy.audit.findings import Finding
from pgtenancy.audit.rules import RULES, rule
from pgtenancy.catalog.snapshot import Function, LargeObjectAccess, Relation, RoleSetting, Snapshot

__all__ = ["DATA_ROLES", "WEAKENING_ROLES"]

_dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
_preparer = _dialect.identifier_preparer
_DATA_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"})
_TRUE_WORDS = {"on", "true", "yes", "1", "t", "y"}
_EXCLUDE_HEAD = re.compile(r"^(EXCLUDE USING \S+ \()")
_IDENTIFIER = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')

# Predefined roles that reach rows, files or programs below row-level security.
DATA_ROLES = {
    "pg_read_all_data": "SELECT on every table, partition, materialized view and sequence",
    "pg_write_all_data": "INSERT, UPDATE and DELETE on every table and partition",
    "pg_read_server_files": "reading any file the server can read, its data files included",
    "pg_write_server_files": "writing any file the server can write",
    "pg_execute_server_program": "running programs as the server's OS user (COPY ... PROGRAM)",
}
# Predefined roles that reach other tenants' sessions or the database's configuration.
WEAKENING_ROLES = {
    "pg_signal_backend": "cancelling or terminating other sessions, other tenants' included",
    "pg_read_all_stats": "reading every session's statement text and statistics",
    "pg_monitor": "reading every session's statement text and statistics",
    "pg_maintain": "VACUUM, REINDEX, LOCK and REFRESH MATERIALIZED VIEW on every table",
    "pg_create_subscription": "creating subscriptions that connect out and write into tables",
    "pg_database_owner": "owning the database: new schemas, database-wide defaults, TEMPORARY given back",
}


# ----------------------------------------------------------------------------- naming and fixes


def _name(schema: str, name: str) -> str:
    return _preparer.quote_schema(schema) + "." + _preparer.quote(name)


def _role(name: str) -> str:
    return "PUBLIC" if name == "PUBLIC" else _preparer.quote(name)


def _function(function: Function) -> str:
    return _name(function.schema, function.name) + "(" + function.arguments + ")"


def _literal(value: str) -> str:
    """``value`` as a SQL string literal, for code that PostgreSQL runs (and quotes names in) itself."""
    return str(literal(value, String()).compile(dialect=_dialect, compile_kwargs={"literal_binds": True}))


def _setting_name(name: str) -> str:
    return ".".join(_preparer.quote(part) for part in name.split("."))


def _listed(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _via(path: list[str]) -> str:
    """How the app role reaches a role: ``directly`` or ``through a -> b``."""
    return "directly" if len(path) <= 2 else "through " + " -> ".join(path[1:-1])


def _cut_membership(snapshot: Snapshot, path: list[str]) -> str:
    """The REVOKE that takes away the app role's first step on ``path``."""
    return f"REVOKE {_preparer.quote(path[1])} FROM {_preparer.quote(snapshot.app.name)};"


def _reachable(snapshot: Snapshot, role: int) -> bool:
    """Whether the app role is, or can become, ``role``."""
    return role == snapshot.app.oid or role in snapshot.app.member_of


# ----------------------------------------------------------------------------- foreign tables


@rule(
    "PGT030",
    "error",
    "Foreign table with tenant rows reachable by the app role",
    why="Row-level security cannot be enabled on a foreign table: whatever the app role may read or write "
    "through it, it reads or writes for every tenant.",
    fix="REVOKE ALL ON ft FROM PUBLIC, app; (copy the rows into a tenant table if the app needs them)",
)
def _tenant_foreign_tables(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.foreign_tables.values():
        granted = sorted(table.app_privileges & _DATA_PRIVILEGES)
        if table.tenant_column is not None and granted:
            yield RULES["PGT030"].finding(
                "foreign table " + table.qualified,
                f"has tenant column {table.tenant_column!r} (server {table.server!r}, {table.wrapper}) and "
                f"the app role holds {', '.join(granted)}: no row-level security can apply to it",
                fix=f"REVOKE ALL ON {_name(table.schema, table.name)} FROM PUBLIC, "
                f"{_preparer.quote(snapshot.app.name)};",
            )


@rule(
    "PGT031",
    "info",
    "Foreign table reachable by the app role",
    why="A foreign table without the tenant column is shared data as far as the catalog tells, and no "
    "row-level security can apply to it; listed so you check that its remote rows belong to no tenant.",
    fix="REVOKE ALL ON ft FROM PUBLIC, app; (if the remote rows belong to tenants)",
)
def _shared_foreign_tables(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.foreign_tables.values():
        granted = sorted(table.app_privileges & _DATA_PRIVILEGES)
        if table.tenant_column is None and granted:
            yield RULES["PGT031"].finding(
                "foreign table " + table.qualified,
                f"maps server {table.server!r} ({table.wrapper}) and the app role holds "
                f"{', '.join(granted)}; row-level security cannot apply to it",
                fix=f"REVOKE ALL ON {_name(table.schema, table.name)} FROM PUBLIC, "
                f"{_preparer.quote(snapshot.app.name)};",
            )


# ----------------------------------------------------------------------------- sequences


def _sequence_fix(snapshot: Snapshot, schema: str, name: str) -> str:
    sequence = _name(schema, name)
    app = _preparer.quote(snapshot.app.name)
    revoke = f"REVOKE SELECT, UPDATE ON SEQUENCE {sequence} FROM {app};"
    return revoke + f" GRANT USAGE ON SEQUENCE {sequence} TO {app};"


@rule(
    "PGT032",
    "warning",
    "Sequence of a tenant table readable or settable by the app role",
    why="Every tenant draws from the same sequence: SELECT shows its last value at any time (how many rows "
    "all tenants insert, and when), UPDATE lets setval() move it under them. Inserting through the column "
    "default needs USAGE only.",
    fix="REVOKE SELECT, UPDATE ON SEQUENCE s FROM app; GRANT USAGE ON SEQUENCE s TO app;",
)
def _tenant_sequences(snapshot: Snapshot) -> Iterator[Finding]:
    for sequence in snapshot.sequences.values():
        granted = sorted(sequence.app_privileges & {"SELECT", "UPDATE"})
        tables = [snapshot.relations[oid] for oid in sorted(sequence.tables) if oid in snapshot.relations]
        isolated = [t.qualified for t in tables if t.isolated]
        if granted and isolated:
            yield RULES["PGT032"].finding(
                "sequence " + sequence.qualified,
                f"feeds tenant table {', '.join(isolated)} and the app role holds {' and '.join(granted)}: "
                "it sees (or moves) the insert count of every tenant",
                fix=_sequence_fix(snapshot, sequence.schema, sequence.name),
            )


@rule(
    "PGT033",
    "info",
    "Shared sequence readable or settable by the app role",
    why="No tenant table draws from it, so its value tells nothing about tenants unless the application "
    "calls nextval() for tenant work itself; listed as inventory.",
    fix="REVOKE SELECT, UPDATE ON SEQUENCE s FROM app; (if tenants' actions advance it)",
)
def _shared_sequences(snapshot: Snapshot) -> Iterator[Finding]:
    for sequence in snapshot.sequences.values():
        granted = sorted(sequence.app_privileges & {"SELECT", "UPDATE"})
        tables = [snapshot.relations.get(oid) for oid in sequence.tables]
        if granted and not any(t is not None and t.isolated for t in tables):
            yield RULES["PGT033"].finding(
                "sequence " + sequence.qualified,
                f"feeds no tenant table and the app role holds {' and '.join(granted)}",
                fix=_sequence_fix(snapshot, sequence.schema, sequence.name),
            )


# ----------------------------------------------------------------------------- large objects


def _reset(setting: RoleSetting, name: str) -> str:
    """The ALTER ... RESET that removes one stored default."""
    parameter = _setting_name(name)
    if setting.role is not None and setting.database is not None:
        target = f"ROLE {_preparer.quote(setting.role)} IN DATABASE {_preparer.quote(setting.database)}"
    elif setting.role is not None:
        target = "ROLE " + _preparer.quote(setting.role)
    elif setting.database is not None:
        target = "DATABASE " + _preparer.quote(setting.database)
    else:
        target = "ROLE ALL"
    return f"ALTER {target} RESET {parameter};"


def _stored_object(setting: RoleSetting) -> str:
    """The object a stored default belongs to: the role it is set for, else the database, else every role."""
    if setting.role is not None:
        return "role " + setting.role
    return "database " + setting.database if setting.database is not None else "role ALL"


def _stored_where(setting: RoleSetting) -> str:
    role = "ALTER ROLE ALL" if setting.role is None else f"role {setting.role!r}"
    if setting.database is None:
        return "ALTER ROLE ALL" if setting.role is None else role
    return f"{role} in database {setting.database!r}" if setting.role else f"database {setting.database!r}"


def _role_oid_sql(name: str) -> str:
    """SQL for the oid of role ``name`` (0 for PUBLIC), the name passed as a literal."""
    if name == "PUBLIC":
        return "0"
    return "(SELECT oid FROM pg_catalog.pg_roles WHERE rolname = " + _literal(name) + ")"  # noqa: S608 - literal


def _large_object_loop(condition: str, action: str) -> str:
    """A DO block that runs ``action`` (``o`` is the oid) on each large object matching ``condition``."""
    return (
        "DO $pgtenancy$ DECLARE o oid; BEGIN "  # noqa: S608 - shown as a fix; names quoted by PostgreSQL
        "FOR o IN SELECT l.oid FROM pg_catalog.pg_largeobject_metadata l WHERE " + condition + " LOOP "
        "EXECUTE " + action + "; END LOOP; END $pgtenancy$;"
    )


def _compat_finding(snapshot: Snapshot) -> Finding | None:
    """lo_compat_privileges as the app role's sessions get it: on, it skips every large object check."""
    stored = snapshot.login_setting("lo_compat_privileges")
    if stored is None:
        if not snapshot.database.lo_compat_privileges:
            return None
        obj = "server setting lo_compat_privileges"
        where, fix = "on the server", "ALTER SYSTEM SET lo_compat_privileges = off; SELECT pg_reload_conf();"
    elif stored.value.strip().lower() in _TRUE_WORDS:
        obj = _stored_object(stored)
        where, fix = "by " + _stored_where(stored), _reset(stored, "lo_compat_privileges")
    else:
        return None
    return RULES["PGT034"].finding(
        obj,
        f"is on for the app role's sessions (set {where}): every tenant reads and writes every large "
        "object, without privilege checks",
        fix=fix,
    )


def _large_object_finding(snapshot: Snapshot, access: LargeObjectAccess) -> Finding:
    """The large objects the app role reaches one way, and the DO block that closes that way."""
    more = ", ..." if access.count > len(access.sample) else ""
    sample = ", ".join(str(oid) for oid in access.sample) + more
    verbs = " and ".join(v for p, v in (("SELECT", "read"), ("UPDATE", "write")) if p in access.privileges)
    if access.via == "owner":
        obj = "large objects owned by " + access.role
        how = "it owns them" if access.role == snapshot.app.name else f"it holds their owner {access.role!r}"
        fix = _large_object_loop(
            "l.lomowner = " + _role_oid_sql(access.role),
            "'ALTER LARGE OBJECT ' || o || ' OWNER TO <a role the app is not a member of>'",
        )
    else:
        obj = "large objects granted to " + access.role
        how = "through a grant to " + ("it" if access.role == snapshot.app.name else access.role)
        grantee = "'PUBLIC'" if access.role == "PUBLIC" else "quote_ident(" + _literal(access.role) + ")"
        fix = _large_object_loop(
            "EXISTS (SELECT FROM aclexplode(l.lomacl) a WHERE a.grantee = "
            + _role_oid_sql(access.role)
            + ")",
            "'REVOKE SELECT, UPDATE ON LARGE OBJECT ' || o || ' FROM ' || " + grantee,
        )
    return RULES["PGT034"].finding(
        obj, f"the app role may {verbs} {access.count} large object(s) (oids {sample}): {how}", fix=fix
    )


@rule(
    "PGT034",
    "error",
    "Large objects readable by the app role",
    why="Large objects have no row-level security: one the app role may read or write by its oid (a small "
    "number, easy to guess) is open to every tenant, whoever it belongs to.",
    fix="REVOKE SELECT, UPDATE ON LARGE OBJECT n FROM PUBLIC, app; lo_compat_privileges = off; large "
    "objects not owned by the app role (or tenant data in bytea columns of tenant tables)",
)
def _large_objects(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return  # PGT012 says it all
    compat = _compat_finding(snapshot)
    if compat is not None:
        yield compat
    for access in snapshot.large_objects:
        yield _large_object_finding(snapshot, access)


# ----------------------------------------------------------------------------- roles


def _predefined(snapshot: Snapshot, described: dict[str, str]) -> Iterator[tuple[int, str, list[str]]]:
    """(oid, what it allows, chain of grants) for each listed predefined role the app role reaches.

    A role reached only through another listed one is that one's fact, not a fact of its own.
    """
    if snapshot.app.superuser:
        return  # a superuser is a member of every role; PGT012 says it all
    listed = {
        oid for oid, role in snapshot.roles.items() if role.name in DATA_ROLES or role.name in WEAKENING_ROLES
    }
    for oid in sorted(snapshot.app.member_of & listed):
        name = snapshot.roles[oid].name
        path = snapshot.membership_path(oid)
        through = {r.oid for r in snapshot.roles.values() if r.name in path[1:-1]}
        if name in described and not through & listed:
            yield oid, described[name], path


@rule(
    "PGT035",
    "error",
    "App role is a member of a predefined role that reaches every tenant",
    why="pg_read_all_data and pg_write_all_data grant privileges on every table, the partitions, "
    "materialized views and sequences nobody granted the app included; the server-file and program roles "
    "read the data files or run commands as the server's OS user, below row-level security.",
    fix="REVOKE pg_read_all_data FROM app; (each such role, or the role that carries it)",
)
def _data_roles(snapshot: Snapshot) -> Iterator[Finding]:
    for oid, allows, path in _predefined(snapshot, DATA_ROLES):
        name = snapshot.roles[oid].name
        yield RULES["PGT035"].finding(
            "role " + snapshot.app.name,
            f"is a member of {name!r} ({_via(path)}): {allows}",
            fix=_cut_membership(snapshot, path),
        )


@rule(
    "PGT036",
    "warning",
    "App role is a member of a predefined role that weakens isolation",
    why="pg_signal_backend ends other tenants' sessions, pg_read_all_stats and pg_monitor show every "
    "session's statements, pg_maintain locks and rewrites every table, and owning the database "
    "(pg_database_owner) lets the app change its defaults and privileges: none of it is a tenant's business.",
    fix="REVOKE pg_signal_backend FROM app; (each such role; for pg_database_owner, ALTER DATABASE db OWNER "
    "TO another role)",
)
def _weakening_roles(snapshot: Snapshot) -> Iterator[Finding]:
    for oid, allows, path in _predefined(snapshot, WEAKENING_ROLES):
        name = snapshot.roles[oid].name
        if name == "pg_database_owner":
            database = snapshot.database.name
            message = f"owns database {database!r}, so it is a member of 'pg_database_owner': {allows}"
            fix = f"ALTER DATABASE {_preparer.quote(database)} OWNER TO <a role the app is not a member of>;"
        else:
            message = f"is a member of {name!r} ({_via(path)}): {allows}"
            fix = _cut_membership(snapshot, path)
        yield RULES["PGT036"].finding("role " + snapshot.app.name, message, fix=fix)


def _createrole(snapshot: Snapshot) -> Finding | None:
    """The CREATEROLE finding for this server's version, if the app role has the attribute."""
    if not snapshot.app.createrole or snapshot.app.superuser:
        return None
    version = snapshot.database.server_version
    rule_id = "PGT037" if version < 160000 else "PGT038"
    if rule_id == "PGT037":
        message = (
            f"has CREATEROLE on PostgreSQL {version // 10000}: it can grant itself any role that is not a "
            "superuser (table owners, BYPASSRLS roles, pg_read_all_data ...)"
        )
    else:
        message = (
            f"has CREATEROLE on PostgreSQL {version // 10000}: it can create login roles and manage them; "
            "it can grant only roles it holds ADMIN OPTION on"
        )
    return RULES[rule_id].finding(
        "role " + snapshot.app.name,
        message,
        fix=f"ALTER ROLE {_preparer.quote(snapshot.app.name)} NOCREATEROLE;",
    )


@rule(
    "PGT037",
    "error",
    "App role has CREATEROLE (PostgreSQL 15 or older)",
    why="Before PostgreSQL 16, CREATEROLE can grant membership in any role that is not a superuser, to "
    "itself too: the tables' owners, BYPASSRLS roles, pg_read_all_data, pg_execute_server_program.",
    fix="ALTER ROLE app NOCREATEROLE;",
)
def _createrole_old(snapshot: Snapshot) -> Iterator[Finding]:
    found = _createrole(snapshot)
    if found is not None and found.rule == "PGT037":
        yield found


@rule(
    "PGT038",
    "warning",
    "App role has CREATEROLE",
    why="Since PostgreSQL 16, CREATEROLE grants only the roles it holds ADMIN OPTION on (and those are "
    "memberships the other role rules judge), but the app can still create login roles and manage the roles "
    "it made from any statement: role management does not belong to a tenant's connection.",
    fix="ALTER ROLE app NOCREATEROLE;",
)
def _createrole_new(snapshot: Snapshot) -> Iterator[Finding]:
    found = _createrole(snapshot)
    if found is not None and found.rule == "PGT038":
        yield found


def _safe_owner(snapshot: Snapshot, candidates: list[int]) -> str:
    """The most common of ``candidates`` that the app role cannot become, quoted, or a placeholder."""
    for oid, _ in Counter(candidates).most_common():
        if not _reachable(snapshot, oid):
            return _preparer.quote(snapshot.roles[oid].name)
    return "<a role the app is not a member of>"


def _ownership(snapshot: Snapshot, owner: int) -> tuple[str, list[str]]:
    """How the app role holds ``owner``'s rights: a phrase and the chain of grants ([] if it is the owner)."""
    if owner == snapshot.app.oid:
        return "the app role owns it", []
    path = snapshot.membership_path(owner)
    name = snapshot.roles[owner].name
    if not path:  # membership PostgreSQL implies, as pg_database_owner's for the database owner
        return f"it is owned by {name!r}, which the app role is a member of", []
    return f"it is owned by {name!r}, which the app role can become ({' -> '.join(path)})", path


@rule(
    "PGT039",
    "error",
    "App role owns, or can become the owner of, a schema holding tenant tables",
    why="A schema's owner may drop any table in it and create another of the same name without row-level "
    "security: the tenants' next writes land in a table where every tenant reads them.",
    fix="ALTER SCHEMA s OWNER TO schema_owner; (a role the app is not a member of)",
)
def _schema_owners(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return
    for schema in snapshot.schemas.values():
        tables = [t for t in snapshot.isolated_tables() if t.schema == schema.name]
        if not tables or not _reachable(snapshot, schema.owner):
            continue
        how, path = _ownership(snapshot, schema.owner)
        if path:
            fix = _cut_membership(snapshot, path)
        else:
            owner = _safe_owner(snapshot, [t.owner for t in tables])
            fix = f"ALTER SCHEMA {_preparer.quote_schema(schema.name)} OWNER TO {owner};"
        yield RULES["PGT039"].finding(
            "schema " + schema.name,
            f"holds tenant table(s) {_listed([t.qualified for t in tables])} and {how}: it can drop them "
            "and put tables without row-level security in their place",
            fix=fix,
        )


@rule(
    "PGT040",
    "error",
    "App role owns, or can become the owner of, a function a policy calls",
    why="The function's owner can CREATE OR REPLACE it with a body that returns true (with CREATE on its "
    "schema, which whoever put it there had) from any statement: every policy that calls it then opens its "
    "table.",
    fix="ALTER FUNCTION f OWNER TO schema_owner; (a role the app is not a member of)",
)
def _policy_function_owners(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return
    callers: dict[int, list[tuple[Relation, str]]] = {}
    for table in snapshot.isolated_tables():
        for policy in table.policies:
            for oid in policy.functions:
                callers.setdefault(oid, []).append((table, policy.name))
    for oid, calls in sorted(callers.items()):
        function = snapshot.functions.get(oid)
        if function is None or not _reachable(snapshot, function.owner):
            continue
        how, path = _ownership(snapshot, function.owner)
        owner = _safe_owner(snapshot, [table.owner for table, _ in calls])
        policies = [f"{name} on {table.qualified}" for table, name in calls]
        yield RULES["PGT040"].finding(
            "function " + function.signature,
            f"is called by policy {_listed(policies)} and {how}: replacing its body opens the table",
            fix=_cut_membership(snapshot, path)
            if path
            else f"ALTER FUNCTION {_function(function)} OWNER TO {owner};",
        )


# ----------------------------------------------------------------------------- stored defaults


@rule(
    "PGT041",
    "error",
    "Tenant setting has a stored default for the app role's sessions",
    why="A default stored with ALTER ROLE / ALTER DATABASE ... SET is what the setting reads when no tenant "
    "is bound (and again after every transaction that set it locally): a connection with no tenant acts as "
    "that tenant.",
    fix="ALTER ROLE app IN DATABASE db RESET app.current_tenant_id; (or ALTER ROLE app / ALTER DATABASE db / "
    "ALTER ROLE ALL ... RESET, wherever it is stored)",
)
def _stored_tenant(snapshot: Snapshot) -> Iterator[Finding]:
    for setting in snapshot.role_settings:
        if setting.name == snapshot.setting and setting.value.strip():
            yield RULES["PGT041"].finding(
                _stored_object(setting),
                f"defaults to {setting.value!r} for the app role's sessions ({_stored_where(setting)}): "
                "with no tenant bound, the policies see that tenant",
                fix=_reset(setting, snapshot.setting),
            )


# ----------------------------------------------------------------------------- SECURITY DEFINER


def _search_path_problem(function: Function) -> str | None:
    """Why the function's names resolve where the caller decides; ``None`` when its search_path is fixed."""
    path = function.search_path
    if path is None:
        return "runs with the caller's search_path"
    schemas = [part.strip().strip('"') for part in path.split(",") if part.strip()]
    if not schemas or schemas[-1] == "pg_temp":
        return None  # empty: names must be qualified; pg_temp last: temporary tables come after the rest
    if "pg_temp" in schemas:
        return f"sets search_path = {path}, with pg_temp before {schemas[-1]}"
    return f"sets search_path = {path} without pg_temp, so temporary tables are searched first"


def _definer_findings(snapshot: Snapshot, *, privileged: bool) -> Iterator[tuple[Function, str, str]]:
    """(function, problem, owner's powers) of executable SECURITY DEFINER functions with an open path."""
    if snapshot.app.superuser:
        return
    for function in snapshot.functions.values():
        if not (function.security_definer and function.app_can_execute):
            continue
        problem = _search_path_problem(function)
        if problem is None or _reachable(snapshot, function.owner):
            continue  # an owner the app can become gives it nothing more
        owner = snapshot.roles[function.owner]
        owned = [t.qualified for t in snapshot.isolated_tables() if t.owner in owner.inherits]
        if owner.bypasses:
            powers = "which bypasses row-level security"
        elif owned:
            powers = f"which owns tenant table(s) {_listed(owned)}"
        else:
            powers = ""
        if bool(powers) == privileged:
            yield function, problem, powers


def _search_path_fix(function: Function) -> str:
    return (
        f"ALTER FUNCTION {_function(function)} SET search_path = pg_catalog, "
        f"{_preparer.quote_schema(function.schema)}, pg_temp;"
    )


@rule(
    "PGT042",
    "error",
    "SECURITY DEFINER function with an open search_path, owned by a role above row-level security",
    why="Without SET search_path (ending in pg_temp) it finds tables and functions where the caller says: "
    "the app can put its own (temporary tables are searched first) in front of the ones the body means, "
    "and they run with the owner's rights, which bypass row-level security or can switch it off.",
    fix="ALTER FUNCTION f SET search_path = pg_catalog, its_schema, pg_temp;",
)
def _open_definers(snapshot: Snapshot) -> Iterator[Finding]:
    for function, problem, powers in _definer_findings(snapshot, privileged=True):
        yield RULES["PGT042"].finding(
            "function " + function.signature,
            f"is SECURITY DEFINER, owned by {snapshot.roles[function.owner].name!r} ({powers}), "
            f"executable by the app role, and {problem}",
            fix=_search_path_fix(function),
        )


@rule(
    "PGT043",
    "warning",
    "SECURITY DEFINER function with an open search_path",
    why="Without SET search_path (ending in pg_temp) the app can make the function run its own tables or "
    "functions with the owner's rights: whatever that role may do, the app may too.",
    fix="ALTER FUNCTION f SET search_path = pg_catalog, its_schema, pg_temp;",
)
def _open_definers_unprivileged(snapshot: Snapshot) -> Iterator[Finding]:
    for function, problem, _ in _definer_findings(snapshot, privileged=False):
        yield RULES["PGT043"].finding(
            "function " + function.signature,
            f"is SECURITY DEFINER, owned by {snapshot.roles[function.owner].name!r}, executable by the app "
            f"role, and {problem}",
            fix=_search_path_fix(function),
        )


# ----------------------------------------------------------------------------- triggers and rules


def _identifiers(body: str) -> set[str]:
    """The names a function body mentions: unquoted ones folded to lower case, quoted ones as written."""
    return {
        quoted.replace('""', '"') if quoted else plain.lower() for quoted, plain in _IDENTIFIER.findall(body)
    }


def _open_targets(snapshot: Snapshot) -> dict[int, tuple[str, str, str]]:
    """Tables and foreign tables, without tenant isolation, that the app role may SELECT: oid -> names."""
    targets = {
        r.oid: (r.schema, r.name, "table " + r.qualified)
        for r in snapshot.relations.values()
        if r.is_table and not r.isolated and "SELECT" in r.app_privileges
    }
    targets.update(
        (f.oid, (f.schema, f.name, "foreign table " + f.qualified))
        for f in snapshot.foreign_tables.values()
        if "SELECT" in f.app_privileges
    )
    return targets


@rule(
    "PGT044",
    "error",
    "Trigger or rule on a tenant table names a table the app role reads without isolation",
    why="A trigger function or rule action that writes a tenant's rows into a table without row-level "
    "security copies them out of the wall: every tenant reads the copies.",
    fix="REVOKE SELECT ON copy FROM app; (or give the copy table the tenant column and the tenant policy)",
)
def _copying_triggers(snapshot: Snapshot) -> Iterator[Finding]:
    targets = _open_targets(snapshot)
    if not targets:
        return
    by_name: dict[str, list[int]] = {}
    for oid, (_, name, _) in targets.items():
        by_name.setdefault(name, []).append(oid)
    names: dict[int, set[str]] = {}
    for table in snapshot.isolated_tables():
        found: list[tuple[str, str, set[int]]] = []
        for trigger in table.triggers:
            function = snapshot.functions.get(trigger.function)
            if function is None:
                continue
            if function.oid not in names:
                names[function.oid] = _identifiers(function.body)
            named = {oid for name in names[function.oid] & by_name.keys() for oid in by_name[name]}
            hit = (set(function.depends_on) | named) & targets.keys()
            if hit:
                found.append(
                    (
                        f"trigger {trigger.name} on {table.qualified}",
                        f"runs {function.signature}, which names",
                        hit,
                    )
                )
        for rewrite in table.rewrite_rules:
            hit = set(rewrite.depends_on) & targets.keys()
            if hit:
                found.append((f"rule {rewrite.name} on {table.qualified}", "writes into", hit))
        for obj, what, hit in found:
            copies = sorted(hit)
            app = _preparer.quote(snapshot.app.name)
            yield RULES["PGT044"].finding(
                obj,
                f"{what} {', '.join(targets[oid][2] for oid in copies)}, which the app role may read "
                "and which has no tenant isolation: tenants' rows copied there are open to every tenant",
                fix=" ".join(
                    f"REVOKE SELECT ON {_name(*targets[oid][:2])} FROM {app};"  # noqa: S608 - shown, not run
                    for oid in copies
                ),
            )


# ----------------------------------------------------------------------------- exclusion constraints


@rule(
    "PGT045",
    "warning",
    "EXCLUDE constraint without the tenant column",
    why="An exclusion constraint is checked across all tenants: a conflict error tells one tenant that "
    "another tenant's row exists (an existence oracle, as PGT021 for unique keys), and blocks its write.",
    fix="EXCLUDE USING gist (tenant_id WITH =, ...) (btree_gist provides = for uuid and integer columns)",
)
def _exclusion_without_tenant(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if not table.app_privileges & {"INSERT", "UPDATE"}:
            continue  # no write, no conflict error, no oracle
        for exclusion in table.exclusions:
            pairs = set(zip(exclusion.columns, exclusion.operators, strict=False))
            if (table.tenant_column or "", "=") in pairs:
                continue
            head = _EXCLUDE_HEAD.match(exclusion.definition)
            column = _preparer.quote(table.tenant_column or "tenant_id")
            definition = exclusion.definition
            if head is not None:
                definition = head.group(0) + column + " WITH =, " + definition[head.end() :]
            name = _preparer.quote(exclusion.name)
            yield RULES["PGT045"].finding(
                "table " + table.qualified,
                f"exclusion constraint {exclusion.name} ({exclusion.definition}) does not compare "
                f"{table.tenant_column!r} with =",
                fix=f"ALTER TABLE {_name(table.schema, table.name)} DROP CONSTRAINT {name}, "
                f"ADD CONSTRAINT {name} {definition};",
            )


# ----------------------------------------------------------------------------- temporary tables


@rule(
    "PGT046",
    "warning",
    "App role may create temporary tables",
    why="Temporary tables have no row-level security, outlive the transaction on a pooled connection and "
    "are searched before every schema: one created where pgtenancy's engine does not see it (inside a "
    "function) can hand a tenant's rows to the next tenant on the connection, or shadow a real table.",
    fix="op.revoke_temporary_tables('app') in a migration "
    "(REVOKE TEMPORARY ON DATABASE db FROM PUBLIC, app);",
)
def _temporary(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser or not snapshot.database.temporary_via:
        return
    database = _preparer.quote(snapshot.database.name)
    grantees = list(snapshot.database.temporary_via)
    yield RULES["PGT046"].finding(
        "database " + snapshot.database.name,
        f"the app role holds TEMPORARY on it (granted to {', '.join(grantees)})",
        fix=" ".join(f"REVOKE TEMPORARY ON DATABASE {database} FROM {_role(g)};" for g in grantees),
    )
