"""The catalog of sealed setups: seal schemas (key table, ``add_key``, verifier) and where seals could leak.

A seal schema is any schema holding a table ``keys`` and a function ``add_key(text, bytea)``, as
``op.create_tenant_seal`` makes it; whether its verifier is really pgtenancy's is the audit's judgement.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

__all__ = ["SealFacts", "SealSchema", "Verifier", "read_seal_facts"]

_KEY_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
_TRUE_WORDS = {"true", "on", "yes", "1", "t", "y"}
_OWN_SOURCES = {"database", "user", "database user", "session", "client"}  # not the server-wide value

# Each seal schema with its key table's and add_key's access, and the verifier current_tenant() if any.
_SEAL_SCHEMAS = text(
    """
    SELECT n.oid, n.nspname, n.nspowner, pg_catalog.has_schema_privilege(:role, n.oid, 'CREATE'),
           k.oid, k.relowner,
           ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE g.rolname::text END
                   FROM (SELECT k.relacl AS acl
                         UNION ALL
                         SELECT c.attacl FROM pg_catalog.pg_attribute c
                          WHERE c.attrelid = k.oid AND c.attnum > 0 AND NOT c.attisdropped) acls,
                        pg_catalog.aclexplode(acls.acl) a
                   LEFT JOIN pg_catalog.pg_roles g ON g.oid = a.grantee
                  WHERE a.grantee <> k.relowner
                  ORDER BY 1),
           ARRAY(SELECT p FROM unnest(CAST(:privileges AS text[])) p
                  WHERE pg_catalog.has_table_privilege(:role, k.oid, p)
                     OR (p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                         AND pg_catalog.has_any_column_privilege(:role, k.oid, p))),
           f.oid, f.proowner,
           EXISTS (SELECT FROM pg_catalog.aclexplode(
                               COALESCE(f.proacl, pg_catalog.acldefault('f', f.proowner))) a
                    WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
           pg_catalog.has_function_privilege(:role, f.oid, 'EXECUTE'),
           v.oid, v.proowner, v.prosecdef, COALESCE(v.proconfig, CAST(ARRAY[] AS text[])), l.lanname,
           v.prorettype = CAST('text' AS regtype), v.prosrc
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_class k ON k.relnamespace = n.oid AND k.relname = 'keys' AND k.relkind = 'r'
      JOIN pg_catalog.pg_proc f ON f.pronamespace = n.oid AND f.proname = 'add_key'
                               AND f.pronargs = 2 AND f.proargtypes[0] = CAST('text' AS regtype)
                               AND f.proargtypes[1] = CAST('bytea' AS regtype)
      LEFT JOIN pg_catalog.pg_proc v ON v.pronamespace = n.oid AND v.proname = 'current_tenant'
                                    AND v.pronargs = 0
      LEFT JOIN pg_catalog.pg_language l ON l.oid = v.prolang
     ORDER BY n.nspname
    """
)

# Whether pg_stat_statements is installed, its track_utility as this session reads it, and the
# server-wide track_activities (with where this session's value comes from).
_TRACKING = text(
    """
    SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements'),
           pg_catalog.current_setting('pg_stat_statements.track_utility', true),
           s.setting, s.source, s.boot_val
      FROM pg_catalog.pg_settings s
     WHERE s.name = 'track_activities'
    """
)


@dataclass(frozen=True)
class Verifier:
    """A function ``current_tenant()`` of a seal schema, as the catalog holds it."""

    oid: int
    owner: int
    security_definer: bool
    config: tuple[str, ...]  # proconfig, e.g. ("search_path=pg_catalog, pg_temp",)
    language: str
    returns_text: bool
    body: str  # prosrc: the text between the dollar quotes


@dataclass(frozen=True)
class SealSchema:
    """A seal schema: who owns it, who may reach its keys and ``add_key``, and its verifier."""

    oid: int
    name: str
    owner: int
    app_can_create: bool
    keys_oid: int
    keys_owner: int
    keys_grantees: tuple[str, ...]  # roles (or PUBLIC) granted a privilege on the key table or a column
    app_key_privileges: frozenset[str]  # what the app role may do to the key table (or one of its columns)
    add_key_oid: int
    add_key_owner: int
    add_key_public: bool  # PUBLIC may execute add_key
    app_can_add_keys: bool  # the app role may execute add_key
    verifier: Verifier | None

    @property
    def keys(self) -> str:
        """The key table as a reader writes it: ``schema.keys``."""
        return self.name + ".keys"


@dataclass(frozen=True)
class SealFacts:
    """Every seal schema, and the server facts that decide where a seal's text could be read."""

    schemas: tuple[SealSchema, ...] = ()
    statements_tracked: bool = False  # pg_stat_statements is installed
    track_utility: str | None = None  # pg_stat_statements.track_utility as the audit reads it (None: unset)
    track_activities: bool = True  # the server-wide value, before role and database defaults


def read_seal_facts(conn: Connection, *, role: int) -> SealFacts:
    """Read the seal schemas and the tracking settings as ``conn`` sees them, for app role oid ``role``."""
    schemas = tuple(
        SealSchema(
            oid=row[0],
            name=row[1],
            owner=row[2],
            app_can_create=row[3],
            keys_oid=row[4],
            keys_owner=row[5],
            keys_grantees=tuple(row[6]),
            app_key_privileges=frozenset(row[7]),
            add_key_oid=row[8],
            add_key_owner=row[9],
            add_key_public=row[10],
            app_can_add_keys=row[11],
            verifier=None
            if row[12] is None
            else Verifier(row[12], row[13], row[14], tuple(row[15]), row[16], row[17], row[18]),
        )
        for row in conn.execute(_SEAL_SCHEMAS, {"role": role, "privileges": _KEY_PRIVILEGES})
    )
    installed, track_utility, value, source, built_in = conn.execute(_TRACKING).one()
    if source in _OWN_SOURCES:
        value = built_in
    return SealFacts(schemas, installed, track_utility, value.lower() in _TRUE_WORDS)
