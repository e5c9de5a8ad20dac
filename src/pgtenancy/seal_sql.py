"""The database half of sealing: the verifier schema, its key table and functions, and sealed policies.

``<schema>.current_tenant()`` is a ``SECURITY DEFINER`` PL/pgSQL function with a pinned ``search_path``,
owned by the migration's role: it returns the tenant setting only when the seal setting holds
``key_id:expires:hex(HMAC-SHA256(key, "tenant:pg_backend_pid():expires"))`` for a key of
``<schema>.keys`` and ``expires`` is still ahead of the transaction's start (``seal.seal_value`` signs
the same message). ``expires`` is compared as text once the HMAC has vouched for it: a signed expiry is
always ten digits (epoch seconds, 2001 to 2286), so no regular expression or cast runs per statement.
HMAC is computed with the built-in ``sha256()`` over the key's inner and outer pads, which
``<schema>.add_key`` derives once, so no extension is needed. Nobody but the owner holds any
privilege on the key table or on ``add_key``; everyone may call the verifier, which reveals nothing
but the caller's own verified tenant.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDLElement
from sqlalchemy.sql.compiler import DDLCompiler

from pgtenancy.config import DEFAULT_SETTING, sql_type_name, validate_env_name, validate_setting_name
from pgtenancy.ddl import POLICY_NAME, validate_identifier
from pgtenancy.predicate import tenant_predicate_sql
from pgtenancy.seal import DEFAULT_KEY_ENV, DEFAULT_SEAL_SETTING, validate_key_id

__all__ = [
    "DEFAULT_SEAL_SCHEMA",
    "VERIFIER",
    "SealStatement",
    "activity_statements",
    "add_key_note",
    "add_key_sql",
    "create_seal_statements",
    "drop_seal_statements",
    "policy_statements",
    "quoted_schema",
    "remove_key_statements",
    "sealed_value_sql",
    "verifier_name",
]

DEFAULT_SEAL_SCHEMA: Final = "pgtenancy_seal"
VERIFIER: Final = "current_tenant"  # the verifier function's name in the seal schema
_TAG: Final = "$pgtenancy$"
_ACTIVITY_SETTINGS: Final = ("track_activities", "pg_stat_statements.track_utility")
_quote = postgresql.dialect().identifier_preparer.quote  # type: ignore[no-untyped-call]


class SealStatement(DDLElement):
    """One statement of the seal's set-up, rendered by this module with its names already quoted."""

    inherit_cache = False

    def __init__(self, sql: str) -> None:
        self.sql = sql


@compiles(SealStatement)
def _compile(element: SealStatement, compiler: DDLCompiler, **kw: Any) -> str:
    return element.sql


def quoted_schema(schema: str) -> str:
    """The seal schema's name, validated and quoted."""
    return _schema(schema)


def verifier_name(schema: str = DEFAULT_SEAL_SCHEMA) -> str:
    """``<schema>.current_tenant``, quoted: the verifier function's qualified name."""
    return _schema(schema) + "." + VERIFIER


def activity_statements(role: str, *, hidden: bool) -> list[SealStatement]:
    """Keep ``role``'s statements out of ``pg_stat_activity`` and ``pg_stat_statements`` (``hidden``), or
    reset both settings: seals travel in ``SET`` statements whose text both would show to the role."""
    quoted = _quote(role)
    return [
        SealStatement(f"ALTER ROLE {quoted} " + (f"SET {name} = off" if hidden else f"RESET {name}"))
        for name in _ACTIVITY_SETTINGS
    ]


def _schema(schema: str) -> str:
    return str(_quote(validate_identifier(schema, "schema")))  # refuses the dollar tag too


def _literal(value: str) -> str:
    """A literal of a value validated to hold no quote (setting names, key ids)."""
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r} cannot be written as a literal here")
    return "'" + value + "'"


def sealed_value_sql(seal_schema: str = DEFAULT_SEAL_SCHEMA, key_type: str = "uuid") -> str:
    """``<schema>.current_tenant()::<type>``: the verified tenant, NULL without a valid seal."""
    return verifier_name(seal_schema) + "()::" + sql_type_name(key_type)


def create_seal_statements(
    schema: str = DEFAULT_SEAL_SCHEMA,
    *,
    setting: str = DEFAULT_SETTING,
    seal_setting: str = DEFAULT_SEAL_SETTING,
) -> list[DDLElement]:
    """The seal schema, its key table, ``add_key`` and the verifier, with no privilege on the keys."""
    s = _schema(schema)
    tenant, seal = _literal(validate_setting_name(setting)), _literal(validate_setting_name(seal_setting))
    # names are quoted identifiers and validated setting names: nothing here comes from a request
    add_key = f"""CREATE OR REPLACE FUNCTION {s}.add_key(key_id text, secret bytea) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS {_TAG}
DECLARE
  k bytea := secret;
  inner_pad bytea;
  outer_pad bytea;
BEGIN
  IF key_id !~ '^[a-z0-9][a-z0-9_-]{{0,31}}$' OR length(secret) < 32 THEN
    RAISE EXCEPTION 'pgtenancy: a seal key id is 1-32 of a-z, 0-9, _ and -; a key has at least 32 bytes';
  END IF;
  IF length(k) > 64 THEN k := sha256(k); END IF;
  k := k || decode(repeat('00', 64 - length(k)), 'hex');
  inner_pad := k;
  outer_pad := k;
  FOR i IN 0..63 LOOP
    inner_pad := set_byte(inner_pad, i, get_byte(k, i) # 54);
    outer_pad := set_byte(outer_pad, i, get_byte(k, i) # 92);
  END LOOP;
  INSERT INTO {s}.keys (key_id, inner_pad, outer_pad) VALUES (key_id, inner_pad, outer_pad)
  ON CONFLICT ON CONSTRAINT keys_pkey DO UPDATE SET inner_pad = EXCLUDED.inner_pad,
    outer_pad = EXCLUDED.outer_pad, added_at = now();
END
{_TAG}"""  # noqa: S608 (quoted schema name only)
    verifier = f"""CREATE OR REPLACE FUNCTION {s}.{VERIFIER}() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {_TAG}
DECLARE
  tenant text := coalesce(current_setting({tenant}, true), '');
  seal text := coalesce(current_setting({seal}, true), '');
  expires text := split_part(seal, ':', 2);
  pads record;
BEGIN
  IF tenant = '' THEN
    RETURN NULL;
  END IF;
  SELECT k.inner_pad, k.outer_pad INTO pads FROM {s}.keys k WHERE k.key_id = split_part(seal, ':', 1);
  IF encode(sha256(pads.outer_pad || sha256(pads.inner_pad
       || convert_to(tenant || ':' || pg_backend_pid() || ':' || expires, 'UTF8'))), 'hex')
     = split_part(seal, ':', 3)
     AND length(expires) = 10 AND expires > extract(epoch FROM now())::bigint::text THEN
    RETURN tenant;
  END IF;
  RETURN NULL;
END
{_TAG}"""  # noqa: S608 (quoted schema name, validated setting names)
    return [
        SealStatement(f"CREATE SCHEMA IF NOT EXISTS {s}"),
        SealStatement(f"REVOKE ALL ON SCHEMA {s} FROM PUBLIC"),
        SealStatement(f"GRANT USAGE ON SCHEMA {s} TO PUBLIC"),
        SealStatement(
            f"CREATE TABLE IF NOT EXISTS {s}.keys (key_id text CONSTRAINT keys_pkey PRIMARY KEY, "
            "inner_pad bytea NOT NULL, outer_pad bytea NOT NULL, added_at timestamptz NOT NULL DEFAULT now())"
        ),
        SealStatement(f"REVOKE ALL ON TABLE {s}.keys FROM PUBLIC"),
        SealStatement(add_key),
        SealStatement(f"REVOKE ALL ON FUNCTION {s}.add_key(text, bytea) FROM PUBLIC"),
        SealStatement(verifier),
        SealStatement(f"GRANT EXECUTE ON FUNCTION {s}.{VERIFIER}() TO PUBLIC"),
    ]


def drop_seal_statements(schema: str = DEFAULT_SEAL_SCHEMA) -> list[DDLElement]:
    """The reverse of ``create_seal_statements``; fails while a sealed policy still uses the verifier."""
    s = _schema(schema)
    return [
        SealStatement(f"DROP FUNCTION IF EXISTS {s}.{VERIFIER}()"),
        SealStatement(f"DROP FUNCTION IF EXISTS {s}.add_key(text, bytea)"),
        SealStatement(f"DROP TABLE IF EXISTS {s}.keys"),
        SealStatement(f"DROP SCHEMA IF EXISTS {s}"),
    ]


def add_key_sql(schema: str = DEFAULT_SEAL_SCHEMA) -> str:
    """``SELECT <schema>.add_key(:key_id, :secret)``: run with bound parameters, never with the key inline."""
    return f"SELECT {_schema(schema)}.add_key(:key_id, :secret)"


def add_key_note(schema: str = DEFAULT_SEAL_SCHEMA, key_id: str = "1", key_env: str = DEFAULT_KEY_ENV) -> str:
    """SQL comment lines saying how to add a key in psql without writing it into a script or a file."""
    key = _literal(validate_key_id(key_id))
    return (
        f"--   \\set seal_key `printenv {validate_env_name(key_env, 'key_env')}`\n"
        f"--   SELECT {_schema(schema)}.add_key({key}, decode(:'seal_key', 'hex'));\n"
    )


def remove_key_statements(key_id: str, schema: str = DEFAULT_SEAL_SCHEMA) -> list[DDLElement]:
    """Delete one key: signatures made with it stop verifying at once."""
    condition = "key_id = " + _literal(validate_key_id(key_id))
    return [SealStatement(" ".join(("DELETE FROM", _schema(schema) + ".keys", "WHERE", condition)))]


def policy_statements(
    table: str,
    column: str = "tenant_id",
    schema: str | None = None,
    *,
    key_type: str = "uuid",
    sealed: bool,
    seal_schema: str = DEFAULT_SEAL_SCHEMA,
    setting: str = DEFAULT_SETTING,
) -> list[DDLElement]:
    """``ALTER POLICY`` pgtenancy's policy on ``table`` to the sealed form, or back to the plain one."""
    name = _quote(validate_identifier(table, "table"))
    target = name if schema is None else _quote(validate_identifier(schema, "schema")) + "." + name
    quoted = _quote(validate_identifier(column, "column"))
    if sealed:
        predicate = quoted + " = (SELECT " + sealed_value_sql(seal_schema, key_type) + ")"
    else:
        predicate = tenant_predicate_sql(quoted, setting, key_type)
    return [
        SealStatement(
            f"ALTER POLICY {_quote(POLICY_NAME)} ON {target} USING ({predicate}) WITH CHECK ({predicate})"
        )
    ]
