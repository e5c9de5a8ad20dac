"""One read of the catalog: the roles, relations, policies and functions the audit rules judge."""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, text

from pgtenancy.catalog.seal import SealFacts, read_seal_facts
from pgtenancy.config import DEFAULT_SETTING
from pgtenancy.errors import ConfigurationError

__all__ = [
    "CitusTable",
    "Column",
    "DatabaseFacts",
    "Exclusion",
    "ForeignKey",
    "ForeignTable",
    "Function",
    "Index",
    "LargeObjectAccess",
    "Policy",
    "Relation",
    "RewriteRule",
    "Role",
    "RoleSetting",
    "Schema",
    "SequenceAccess",
    "Snapshot",
    "Trigger",
    "call_names",
    "read_snapshot",
]

T = TypeVar("T")
_SYSTEM_SCHEMAS = ["pg_catalog", "information_schema"]
_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
_TRUE_WORDS = {"true", "on", "yes", "1", "t", "y"}
_POLICY_COLUMN = re.compile(r'^\(*"?([A-Za-z_][A-Za-z0-9_$]*)"?\)*(?:::[a-z ]+\)*)?\s*=')  # col, (col)::text

_ROLES = text(
    """
    SELECT r.oid, r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole,
           ARRAY(SELECT m.oid FROM pg_catalog.pg_roles m WHERE pg_catalog.pg_has_role(r.oid, m.oid, 'USAGE')),
           ARRAY(SELECT m.oid FROM pg_catalog.pg_roles m WHERE pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER'))
      FROM pg_catalog.pg_roles r
    """
)

_RELATIONS = text(
    """
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.relispartition, c.relowner, c.relrowsecurity,
           c.relforcerowsecurity,
           (SELECT o.option_value FROM pg_catalog.pg_options_to_table(c.reloptions) o
             WHERE o.option_name = 'security_invoker'),
           ARRAY(SELECT p FROM unnest(CAST(:privileges AS text[])) p
                  WHERE pg_catalog.has_table_privilege(:role, c.oid, p)),
           ARRAY(SELECT DISTINCT g.rolname::text
                   FROM pg_catalog.aclexplode(c.relacl) a
                   JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
                  WHERE a.grantee <> c.relowner AND (g.rolsuper OR g.rolbypassrls) ORDER BY 1)
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p', 'v', 'm')
     ORDER BY n.nspname, c.relname
    """
)

_COLUMNS = text(
    """
    SELECT a.attrelid, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), t.typcategory,
           a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = ANY(:oids) AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attrelid, a.attnum
    """
)

_POLICIES = text(
    """
    SELECT p.polrelid, p.polname, p.polcmd, p.polpermissive,
           0 = ANY(p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) r
                                           WHERE pg_catalog.pg_has_role(:role, r, 'MEMBER')),
           pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
           ARRAY(SELECT d.refobjid FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
                    AND d.refclassid = 'pg_catalog.pg_proc'::regclass)
      FROM pg_catalog.pg_policy p
     WHERE p.polrelid = ANY(:oids)
     ORDER BY p.polrelid, p.polname
    """
)

_INDEXES = text(
    """
    SELECT i.indrelid, c.relname, i.indisunique,
           ARRAY(SELECT COALESCE(a.attname::text, '')
                   FROM unnest(CAST(i.indkey AS int2[])) WITH ORDINALITY k(attnum, ord)
                   LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  ORDER BY k.ord)
      FROM pg_catalog.pg_index i
      JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
     WHERE i.indrelid = ANY(:oids)
     ORDER BY i.indrelid, c.relname
    """
)

_FOREIGN_KEYS = text(
    """
    SELECT k.conrelid, k.conname, k.confrelid::regclass::text,
           EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = k.confrelid AND a.attname = :column AND NOT a.attisdropped),
           ARRAY(SELECT a.attname::text FROM unnest(k.conkey) c(attnum)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = c.attnum),
           k.confrelid
      FROM pg_catalog.pg_constraint k
     WHERE k.contype = 'f' AND k.conrelid = ANY(:oids)
     ORDER BY k.conrelid, k.conname
    """
)

_CITUS = text("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')")

# Every table Citus holds (not only the audited ones: a foreign key may reference any of them).
_CITUS_TABLES = text(
    """
    SELECT p.logicalrelid::oid, p.partmethod, p.repmodel,
           pg_catalog.column_to_column_name(p.logicalrelid, p.partkey), p.colocationid
      FROM pg_catalog.pg_dist_partition p
    """
)

_VIEW_DEPENDENCIES = text(
    """
    SELECT DISTINCT r.ev_class, d.refobjid
      FROM pg_catalog.pg_rewrite r
      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                                 AND d.refclassid = 'pg_catalog.pg_class'::regclass
     WHERE r.ev_class = ANY(:oids) AND d.refobjid <> r.ev_class
    """
)

_FUNCTIONS = text(
    """
    SELECT f.oid, n.nspname, f.proname, pg_catalog.pg_get_function_identity_arguments(f.oid), f.proowner,
           f.prosecdef, f.proleakproof, pg_catalog.has_function_privilege(:role, f.oid, 'EXECUTE'),
           f.pronargs, f.proretset OR t.typtype = 'c', f.provolatile,
           CASE WHEN f.prokind IN ('f', 'p') THEN pg_catalog.pg_get_functiondef(f.oid) ELSE f.prosrc END,
           ARRAY(SELECT d.refobjid FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = f.oid
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass),
           COALESCE(f.proconfig, CAST(ARRAY[] AS text[]))
      FROM pg_catalog.pg_proc f
      JOIN pg_catalog.pg_namespace n ON n.oid = f.pronamespace
      JOIN pg_catalog.pg_type t ON t.oid = f.prorettype
     WHERE n.nspname <> ALL(:system) AND n.nspname NOT LIKE 'pg\\_%'
       AND (f.prosecdef OR f.proleakproof OR f.oid = ANY(:policy_functions)
            OR f.oid = ANY(:trigger_functions)
            OR (f.prokind = 'f' AND f.prolang IN (SELECT l.oid FROM pg_catalog.pg_language l
                                                   WHERE l.lanname IN ('sql', 'plpgsql'))))
     ORDER BY n.nspname, f.proname, f.oid
    """
)


_TRIGGERS = text(
    """
    SELECT t.tgrelid, t.tgname, t.tgfoid
      FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = ANY(:oids) AND NOT t.tgisinternal
     ORDER BY t.tgrelid, t.tgname
    """
)

# Rewrite rules other than a view's own _RETURN, with the relations their actions name.
_REWRITE_RULES = text(
    """
    SELECT r.ev_class, r.rulename, pg_catalog.pg_get_ruledef(r.oid),
           ARRAY(SELECT DISTINCT d.refobjid FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class)
      FROM pg_catalog.pg_rewrite r
     WHERE r.ev_class = ANY(:oids) AND r.rulename <> '_RETURN'
     ORDER BY r.ev_class, r.rulename
    """
)

_EXCLUSIONS = text(
    """
    SELECT k.conrelid, k.conname, pg_catalog.pg_get_constraintdef(k.oid),
           ARRAY(SELECT COALESCE(a.attname::text, '')
                   FROM unnest(CAST(i.indkey AS int2[])) WITH ORDINALITY c(attnum, ord)
                   LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = c.attnum
                  ORDER BY c.ord),
           ARRAY(SELECT o.oprname::text
                   FROM unnest(k.conexclop) WITH ORDINALITY e(op, ord)
                   JOIN pg_catalog.pg_operator o ON o.oid = e.op
                  ORDER BY e.ord)
      FROM pg_catalog.pg_constraint k
      JOIN pg_catalog.pg_index i ON i.indexrelid = k.conindid
     WHERE k.contype = 'x' AND k.conrelid = ANY(:oids)
     ORDER BY k.conrelid, k.conname
    """
)

_FOREIGN_TABLES = text(
    """
    SELECT c.oid, n.nspname, c.relname, c.relowner, s.srvname, w.fdwname,
           ARRAY(SELECT p FROM unnest(CAST(:privileges AS text[])) p
                  WHERE pg_catalog.has_table_privilege(:role, c.oid, p)),
           ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)
      FROM pg_catalog.pg_foreign_table f
      JOIN pg_catalog.pg_class c ON c.oid = f.ftrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
      JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
     WHERE n.nspname = ANY(:schemas)
     ORDER BY n.nspname, c.relname
    """
)

# Each sequence with the app role's privileges on it and the tables that own it (serial, identity).
_SEQUENCES = text(
    """
    SELECT c.oid, n.nspname, c.relname,
           ARRAY(SELECT p FROM unnest(CAST(ARRAY['SELECT', 'USAGE', 'UPDATE'] AS text[])) p
                  WHERE pg_catalog.has_sequence_privilege(:role, c.oid, p)),
           ARRAY(SELECT d.refobjid FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.objsubid = 0
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i'))
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'S' AND n.nspname = ANY(:schemas)
     ORDER BY n.nspname, c.relname
    """
)

# The tables whose column defaults draw from each sequence (nextval('s')): one pass over pg_depend.
_SEQUENCE_DEFAULTS = text(
    """
    SELECT d.refobjid, array_agg(DISTINCT ad.adrelid)
      FROM pg_catalog.pg_depend d
      JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid
      JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
     WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
     GROUP BY d.refobjid
    """
)

_SCHEMAS = text(
    "SELECT n.oid, n.nspname, n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY(:schemas)"
)

_MEMBERSHIPS = text("SELECT m.member, m.roleid FROM pg_catalog.pg_auth_members m")

# The server version, the database, who gives the app role TEMPORARY on it (owner, PUBLIC or a role it
# inherits), and lo_compat_privileges as this session sees it.
_DATABASE = text(
    """
    SELECT pg_catalog.current_setting('server_version_num')::int, d.datname,
           ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE g.rolname::text END
                   FROM pg_catalog.aclexplode(COALESCE(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
                   LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
                  WHERE a.privilege_type = 'TEMPORARY'
                    AND (a.grantee = 0 OR pg_catalog.pg_has_role(:role, a.grantee, 'USAGE'))
                  ORDER BY 1),
           s.setting, s.source, s.boot_val
      FROM pg_catalog.pg_database d, pg_catalog.pg_settings s
     WHERE d.datname = pg_catalog.current_database() AND s.name = 'lo_compat_privileges'
    """
)

# Session defaults stored with ALTER ROLE / ALTER DATABASE ... SET that apply when the app role logs in
# to this database (role 0: ALTER ROLE ALL; database 0: every database).
_ROLE_SETTINGS = text(
    """
    SELECT s.setrole, s.setdatabase, split_part(c, '=', 1), substr(c, strpos(c, '=') + 1)
      FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
     WHERE s.setrole IN (0, :role)
       AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
     ORDER BY s.setrole, s.setdatabase, 3
    """
)

# Large objects the app role can read or write, grouped by how: as (a role whose privileges it holds
# being) their owner, or through a grant to PUBLIC or to a role it inherits.
_LARGE_OBJECTS = text(
    """
    SELECT 'owner', l.lomowner, count(*), (array_agg(l.oid ORDER BY l.oid))[1:5],
           CAST(ARRAY['SELECT', 'UPDATE'] AS text[])
      FROM pg_catalog.pg_largeobject_metadata l
     GROUP BY l.lomowner
    HAVING pg_catalog.pg_has_role(:role, l.lomowner, 'USAGE')
    UNION ALL
    SELECT 'grant', a.grantee, count(DISTINCT l.oid), (array_agg(DISTINCT l.oid ORDER BY l.oid))[1:5],
           array_agg(DISTINCT a.privilege_type)
      FROM pg_catalog.pg_largeobject_metadata l, pg_catalog.aclexplode(l.lomacl) a
     WHERE a.grantee <> l.lomowner AND a.privilege_type IN ('SELECT', 'UPDATE')
     GROUP BY a.grantee
    HAVING a.grantee = 0 OR pg_catalog.pg_has_role(:role, a.grantee, 'USAGE')
    """
)


@dataclass(frozen=True)
class Role:
    """A role's attributes and the roles whose privileges it holds (``inherits``) or can SET ROLE to."""

    oid: int
    name: str
    superuser: bool
    bypassrls: bool
    inherits: frozenset[int]
    member_of: frozenset[int]
    createrole: bool = False

    @property
    def bypasses(self) -> bool:
        """Whether row-level security never applies to this role."""
        return self.superuser or self.bypassrls


@dataclass(frozen=True)
class Column:
    """A column, with what an insert must supply for it."""

    name: str
    type: str
    category: str  # pg_type.typcategory: S string, N numeric, B boolean, U user (uuid), D date/time...
    required: bool  # NOT NULL without a default, identity or generation expression


@dataclass(frozen=True)
class Policy:
    """A row-level security policy, its expressions as PostgreSQL prints them back."""

    name: str
    command: str  # "*" all, "r" select, "a" insert, "w" update, "d" delete
    permissive: bool
    applies_to_app: bool  # TO PUBLIC, or to a role the app role is or can SET ROLE to
    using: str | None
    check: str | None
    functions: tuple[int, ...]

    @property
    def writes(self) -> bool:
        """Whether the policy governs new rows (ALL, INSERT, UPDATE)."""
        return self.command in ("*", "a", "w")


@dataclass(frozen=True)
class Index:
    """An index by its column names in order ('' for an expression)."""

    name: str
    unique: bool
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key, its columns and whether the table it references has a tenant column."""

    name: str
    references: str
    references_tenant_table: bool
    columns: tuple[str, ...]
    references_oid: int = 0


@dataclass(frozen=True)
class Exclusion:
    """An EXCLUDE constraint: its definition and, per index column, the column name and operator."""

    name: str
    definition: str
    columns: tuple[str, ...]  # '' for an expression
    operators: tuple[str, ...]


@dataclass(frozen=True)
class Trigger:
    """A user trigger on an audited relation and the function it runs."""

    name: str
    function: int


@dataclass(frozen=True)
class RewriteRule:
    """A rewrite rule (CREATE RULE) on an audited relation and the relations its actions name."""

    name: str
    definition: str
    depends_on: frozenset[int]


@dataclass(frozen=True)
class CitusTable:
    """How Citus holds a table: hash-``distributed`` by ``column``, ``reference`` or ``local``; its group."""

    kind: str
    column: str | None
    colocation: int


@dataclass(frozen=True)
class Relation:
    """A table, view or materialized view in an audited schema."""

    oid: int
    schema: str
    name: str
    kind: str  # r table, p partitioned table, v view, m materialized view
    partition: bool  # a partition is also reachable directly, with its own RLS flags and grants
    owner: int
    rls: bool
    force: bool
    security_invoker: bool
    app_privileges: frozenset[str]
    bypass_grantees: tuple[str, ...]
    columns: tuple[Column, ...] = ()
    tenant_column: str | None = None
    policies: tuple[Policy, ...] = ()
    indexes: tuple[Index, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    depends_on: frozenset[int] = frozenset()
    exclusions: tuple[Exclusion, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    rewrite_rules: tuple[RewriteRule, ...] = ()

    @property
    def qualified(self) -> str:
        """``schema.name`` as a reader would write it."""
        return self.schema + "." + self.name

    @property
    def is_table(self) -> bool:
        return self.kind in ("r", "p")

    @property
    def isolated(self) -> bool:
        """A table whose rows belong to tenants: it has the tenant column."""
        return self.is_table and self.tenant_column is not None

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Function:
    """A function the rules look at: SECURITY DEFINER, LEAKPROOF, called by a policy or by a trigger."""

    oid: int
    schema: str
    name: str
    arguments: str
    owner: int
    security_definer: bool
    leakproof: bool
    app_can_execute: bool
    argument_count: int
    returns_rows: bool
    volatility: str
    body: str
    depends_on: frozenset[int]
    config: tuple[str, ...] = ()  # proconfig: "name=value" set for each call (SET search_path = ...)

    @property
    def signature(self) -> str:
        return self.schema + "." + self.name + "(" + self.arguments + ")"

    @property
    def search_path(self) -> str | None:
        """The search_path the function sets for its calls, or ``None``: it runs with the caller's."""
        return next((c.partition("=")[2] for c in self.config if c.startswith("search_path=")), None)


@dataclass(frozen=True)
class ForeignTable:
    """A foreign table in an audited schema: row-level security cannot be enabled on it."""

    oid: int
    schema: str
    name: str
    owner: int
    server: str
    wrapper: str
    app_privileges: frozenset[str]
    columns: tuple[str, ...]
    tenant_column: str | None

    @property
    def qualified(self) -> str:
        return self.schema + "." + self.name


@dataclass(frozen=True)
class SequenceAccess:
    """A sequence in an audited schema, the app role's privileges on it and the tables that draw from it."""

    oid: int
    schema: str
    name: str
    app_privileges: frozenset[str]  # of SELECT, USAGE, UPDATE
    tables: frozenset[int]  # owning it (serial, identity) or calling it in a column default

    @property
    def qualified(self) -> str:
        return self.schema + "." + self.name


@dataclass(frozen=True)
class Schema:
    """An audited schema and its owner."""

    oid: int
    name: str
    owner: int


@dataclass(frozen=True)
class RoleSetting:
    """A session default stored by ALTER ROLE / ALTER DATABASE ... SET that applies to the app's logins."""

    name: str
    value: str
    role: str | None  # None: ALTER ROLE ALL, or ALTER DATABASE alone
    database: str | None  # None: in every database

    @property
    def rank(self) -> int:
        """PostgreSQL's precedence: role in database, then role, then database, then ALTER ROLE ALL."""
        return (2 if self.role is None else 0) + (1 if self.database is None else 0)


@dataclass(frozen=True)
class LargeObjectAccess:
    """Large objects the app role reaches one way: as their ``owner`` or through a ``grant`` to a grantee."""

    via: str  # "owner" or "grant"
    role: str  # the owner or grantee ("PUBLIC" for a grant to everyone)
    count: int
    sample: tuple[int, ...]  # the first few oids
    privileges: frozenset[str]  # SELECT (read) and/or UPDATE (write)


@dataclass(frozen=True)
class DatabaseFacts:
    """Facts about the server and the audited database as a whole."""

    server_version: int = 0  # server_version_num, e.g. 160004
    name: str = ""
    temporary_via: tuple[str, ...] = ()  # who gives the app role TEMPORARY: its own name, PUBLIC, a role
    lo_compat_privileges: bool = False  # the server-wide value, before role and database defaults


@dataclass(frozen=True)
class Snapshot:
    """Everything the audit rules read, for one application role and one tenant setting."""

    app: Role
    setting: str
    roles: dict[int, Role]
    relations: dict[int, Relation]
    functions: dict[int, Function] = field(default_factory=dict)
    citus_tables: dict[int, CitusTable] | None = None  # None: the database has no Citus extension
    admin_roles: frozenset[str] = frozenset()  # roles declared as admin tools: they bypass RLS by design
    database: DatabaseFacts = field(default_factory=DatabaseFacts)
    schemas: dict[int, Schema] = field(default_factory=dict)
    foreign_tables: dict[int, ForeignTable] = field(default_factory=dict)
    sequences: dict[int, SequenceAccess] = field(default_factory=dict)
    memberships: frozenset[tuple[int, int]] = frozenset()  # (member, role): direct grants of role to member
    role_settings: tuple[RoleSetting, ...] = ()
    large_objects: tuple[LargeObjectAccess, ...] = ()
    seal: SealFacts = field(default_factory=SealFacts)
    sealing_declared: bool = False  # every tenant table must be sealed (``pgtenancy check --sealed``)

    @functools.cached_property
    def function_bodies(self) -> tuple[tuple[str, str], ...]:
        """Every SQL or PL/pgSQL function read, by the names a body may call it (see ``call_names``)."""
        return tuple(sorted(call_names(self.functions.values()).items()))

    def isolated_tables(self) -> list[Relation]:
        return [r for r in self.relations.values() if r.isolated]

    def membership_path(self, target: int) -> list[str]:
        """The shortest chain of direct grants from the app role to ``target``, by name ([] if none)."""
        grants: dict[int, list[int]] = {}
        for member, role in sorted(self.memberships):
            grants.setdefault(member, []).append(role)
        previous: dict[int, int | None] = {self.app.oid: None}
        pending = deque([self.app.oid])
        while pending and target not in previous:
            member = pending.popleft()
            for role in grants.get(member, ()):
                if role not in previous:
                    previous[role] = member
                    pending.append(role)
        path: list[str] = []
        step = target if target in previous else None
        while step is not None:
            path.append(self.roles[step].name)
            step = previous[step]
        return path[::-1]

    def login_setting(self, name: str) -> RoleSetting | None:
        """The stored default for ``name`` that wins when the app role logs in, if any."""
        found = [s for s in self.role_settings if s.name == name]
        return min(found, key=lambda s: s.rank) if found else None

    def citus_table(self, oid: int) -> CitusTable | None:
        """How Citus holds the table ``oid``, or ``None`` for a plain table (or without Citus)."""
        return None if self.citus_tables is None else self.citus_tables.get(oid)

    def bypasses_rls_of(self, role_oid: int, table: Relation) -> bool:
        """Whether ``table``'s policies skip ``role_oid`` (superuser, BYPASSRLS, unforced table's owner)."""
        role = self.roles[role_oid]
        return role.bypasses or not table.rls or (not table.force and table.owner in role.inherits)

    def tables_read(self, function: Function) -> set[int]:
        """The isolated tables a function depends on or names in its body."""
        found = set(function.depends_on)
        for table in self.isolated_tables():
            if re.search(
                r"(?<![\w$])\"?" + re.escape(table.name) + r"\"?(?![\w$])", function.body, re.IGNORECASE
            ):
                found.add(table.oid)
        return found

    def base_tables(self, relation: Relation) -> set[int]:
        """The tables a view reads, through other views of the audited schemas too."""
        seen: set[int] = set()
        pending = list(relation.depends_on)
        tables: set[int] = set()
        while pending:
            oid = pending.pop()
            if oid in seen:
                continue
            seen.add(oid)
            found = self.relations.get(oid)
            if found is None:
                tables.add(oid)
            elif found.kind in ("v", "m"):
                pending.extend(found.depends_on)
            else:
                tables.add(oid)
        return tables


def call_names(functions: Iterable[Function]) -> dict[str, str]:
    """Each function's body by the names SQL may call it: ``schema.name``, and ``name`` where no other
    of ``functions`` has it (an overloaded or repeated name is never resolved: never the wrong body)."""
    bodies: dict[str, str] = {}
    bare: dict[str, set[str]] = {}
    for function in functions:
        bodies[function.schema + "." + function.name] = function.body
        bare.setdefault(function.name, set()).add(function.body)
    bodies.update((name, next(iter(found))) for name, found in bare.items() if len(found) == 1)
    return bodies


def read_snapshot(
    conn: Connection,
    *,
    role: str,
    setting: str = DEFAULT_SETTING,
    schemas: Sequence[str] = ("public",),
    column: str = "tenant_id",
) -> Snapshot:
    """Read the catalog as ``conn`` sees it; ``role`` is the application role whose view matters."""
    roles = {
        oid: Role(oid, name, superuser, bypass, frozenset(inherits), frozenset(members), createrole)
        for oid, name, superuser, bypass, createrole, inherits, members in conn.execute(_ROLES)
    }
    app = next((r for r in roles.values() if r.name == role), None)
    if app is None:
        raise ConfigurationError(f"role {role!r} does not exist: pass the role the application connects as")
    params = {"role": app.oid, "schemas": list(schemas), "column": column}
    base = {
        row[0]: Relation(
            oid=row[0],
            schema=row[1],
            name=row[2],
            kind=row[3],
            partition=row[4],
            owner=row[5],
            rls=row[6],
            force=row[7],
            security_invoker=(row[8] or "").lower() in _TRUE_WORDS,
            app_privileges=frozenset(row[9]),
            bypass_grantees=tuple(row[10]),
        )
        for row in conn.execute(_RELATIONS, {**params, "privileges": _PRIVILEGES})
    }
    oids = list(base)
    columns = _grouped(
        conn.execute(_COLUMNS, {"oids": oids}), lambda r: Column(r[1], r[2], r[3], r[4] and not r[5])
    )
    policies = _grouped(
        conn.execute(_POLICIES, {**params, "oids": oids}),
        lambda r: Policy(r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7])),
    )
    indexes = _grouped(conn.execute(_INDEXES, {"oids": oids}), lambda r: Index(r[1], r[2], tuple(r[3])))
    foreign_keys = _grouped(
        conn.execute(_FOREIGN_KEYS, {**params, "oids": oids}),
        lambda r: ForeignKey(r[1], r[2], r[3], tuple(r[4]), r[5]),
    )
    depends: dict[int, set[int]] = {}
    for view, referenced in conn.execute(_VIEW_DEPENDENCIES, {"oids": oids}):
        depends.setdefault(view, set()).add(referenced)
    exclusions = _grouped(
        conn.execute(_EXCLUSIONS, {"oids": oids}), lambda r: Exclusion(r[1], r[2], tuple(r[3]), tuple(r[4]))
    )
    triggers = _grouped(conn.execute(_TRIGGERS, {"oids": oids}), lambda r: Trigger(r[1], r[2]))
    rewrite_rules = _grouped(
        conn.execute(_REWRITE_RULES, {"oids": oids}), lambda r: RewriteRule(r[1], r[2], frozenset(r[3]))
    )
    relations = {}
    for oid, relation in base.items():
        own_columns = tuple(columns.get(oid, ()))
        own_policies = tuple(policies.get(oid, ()))
        relations[oid] = replace(
            relation,
            columns=own_columns,
            policies=own_policies,
            indexes=tuple(indexes.get(oid, ())),
            foreign_keys=tuple(foreign_keys.get(oid, ())),
            depends_on=frozenset(depends.get(oid, ())),
            exclusions=tuple(exclusions.get(oid, ())),
            triggers=tuple(triggers.get(oid, ())),
            rewrite_rules=tuple(rewrite_rules.get(oid, ())),
            tenant_column=_tenant_column(relation, own_columns, own_policies, column, setting),
        )
    policy_functions = sorted({f for p in policies.values() for policy in p for f in policy.functions})
    functions = {
        row[0]: Function(
            oid=row[0],
            schema=row[1],
            name=row[2],
            arguments=row[3],
            owner=row[4],
            security_definer=row[5],
            leakproof=row[6],
            app_can_execute=row[7],
            argument_count=row[8],
            returns_rows=row[9],
            volatility=row[10],
            body=row[11],
            depends_on=frozenset(row[12]),
            config=tuple(row[13]),
        )
        for row in conn.execute(
            _FUNCTIONS,
            {
                "role": app.oid,
                "system": _SYSTEM_SCHEMAS,
                "policy_functions": policy_functions,
                "trigger_functions": sorted({t.function for ts in triggers.values() for t in ts}),
            },
        )
    }
    database = _database(conn, app)
    return Snapshot(
        app=app,
        setting=setting,
        roles=roles,
        relations=relations,
        functions=functions,
        citus_tables=_citus_tables(conn),
        database=database,
        schemas={oid: Schema(oid, name, owner) for oid, name, owner in conn.execute(_SCHEMAS, params)},
        foreign_tables={
            row[0]: ForeignTable(
                oid=row[0],
                schema=row[1],
                name=row[2],
                owner=row[3],
                server=row[4],
                wrapper=row[5],
                app_privileges=frozenset(row[6]),
                columns=tuple(row[7]),
                tenant_column=column if column in row[7] else None,
            )
            for row in conn.execute(_FOREIGN_TABLES, {**params, "privileges": _PRIVILEGES})
        },
        sequences=_sequences(conn, params),
        memberships=frozenset((member, role) for member, role in conn.execute(_MEMBERSHIPS)),
        role_settings=tuple(
            RoleSetting(
                name,
                value,
                roles[role].name if role in roles else None,
                database.name if database_oid else None,
            )
            for role, database_oid, name, value in conn.execute(_ROLE_SETTINGS, params)
        ),
        large_objects=tuple(
            LargeObjectAccess(
                via,
                "PUBLIC" if role == 0 else roles[role].name,
                count,
                tuple(sample),
                frozenset(privileges),
            )
            for via, role, count, sample, privileges in conn.execute(_LARGE_OBJECTS, params)
        ),
        seal=read_seal_facts(conn, role=app.oid),
    )


def _sequences(conn: Connection, params: dict[str, Any]) -> dict[int, SequenceAccess]:
    """The sequences of the audited schemas, each with the tables that own it or draw from it."""
    defaults: dict[int, list[int]] = {oid: tables for oid, tables in conn.execute(_SEQUENCE_DEFAULTS)}
    return {
        oid: SequenceAccess(
            oid, schema, name, frozenset(privileges), frozenset([*owners, *defaults.get(oid, ())])
        )
        for oid, schema, name, privileges, owners in conn.execute(_SEQUENCES, params)
    }


def _database(conn: Connection, app: Role) -> DatabaseFacts:
    """The server version, the database's name, who gives the app role TEMPORARY, lo_compat_privileges.

    A value of lo_compat_privileges that this session got from its own role or database default is not
    the server's: then the server-wide value is taken to be the built-in one.
    """
    version, name, temporary, value, source, built_in = conn.execute(_DATABASE, {"role": app.oid}).one()
    if source in ("database", "user", "database user", "session", "client"):
        value = built_in
    return DatabaseFacts(version, name, tuple(temporary), value.lower() in _TRUE_WORDS)


def _citus_tables(conn: Connection) -> dict[int, CitusTable] | None:
    """Every table in ``pg_dist_partition`` by oid, or ``None`` when the Citus extension is absent."""
    if not conn.execute(_CITUS).scalar_one():
        return None
    return {
        oid: CitusTable(_citus_kind(method, replication), column, group)
        for oid, method, replication, column, group in conn.execute(_CITUS_TABLES)
    }


def _citus_kind(method: str, replication: str) -> str:
    """``distributed`` (hash), ``reference`` (replicated to every node) or ``local`` (the coordinator's)."""
    if method == "h":
        return "distributed"
    return "reference" if replication == "t" else "local"


def _grouped(
    rows: Iterable[Row[*tuple[Any, ...]]], make: Callable[[Row[*tuple[Any, ...]]], T]
) -> dict[int, list[T]]:
    """Rows keyed by their first column (a relation oid), each made into an object by ``make``."""
    grouped: dict[int, list[T]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(make(row))
    return grouped


def _tenant_column(
    relation: Relation, columns: tuple[Column, ...], policies: tuple[Policy, ...], column: str, setting: str
) -> str | None:
    """The tenant column: ``column`` if the table has it, else the one a policy compares with the setting."""
    if not relation.is_table:
        return None
    names = {c.name for c in columns}
    if column in names:
        return column
    marker = "current_setting('" + setting + "'"
    for policy in policies:
        for expression in (policy.using, policy.check):
            if expression and marker in expression:
                match = _POLICY_COLUMN.match(expression)
                if match and match.group(1) in names:
                    return match.group(1)
    return None
