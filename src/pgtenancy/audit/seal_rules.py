"""Static rules for sealed setups: the key table, ``add_key`` and the verifier out of the app role's reach,
every tenant table sealed where sealing is declared, and no seal left readable in statistics views.

Each registers into the same ``RULES`` as the table and policy rules (import this module to register).
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.dialects import postgresql

from pgtenancy import seal_sql
from pgtenancy.audit.findings import Finding
from pgtenancy.audit.rules import RULES, policy_analysis, rule
from pgtenancy.audit.sealing import PINNED_SEARCH_PATH, table_verifiers, trusted_verifiers, verifier_settings
from pgtenancy.catalog.seal import SealSchema
from pgtenancy.catalog.snapshot import Relation, RoleSetting, Snapshot

__all__: list[str] = []

_preparer = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
_TRUE_WORDS = {"on", "true", "yes", "1", "t", "y"}
_SAFE_OWNER = "<a role the app is not a member of>"


def _reachable(snapshot: Snapshot, role: int) -> bool:
    """Whether the app role is, or can become, ``role``."""
    return role == snapshot.app.oid or role in snapshot.app.member_of


def _owned_by(snapshot: Snapshot, owner: int) -> str:
    name = snapshot.roles[owner].name
    if owner == snapshot.app.oid:
        return "the app role owns it"
    return f"it is owned by {name!r}, which the app role can become"


def _schema(schema: SealSchema) -> str:
    return str(_preparer.quote_schema(schema.name))


def _app(snapshot: Snapshot) -> str:
    return str(_preparer.quote(snapshot.app.name))


def _sealed_tables(snapshot: Snapshot) -> list[Relation]:
    """The tenant tables whose policies call a trusted verifier."""
    return [t for t in snapshot.isolated_tables() if table_verifiers(snapshot, t)]


def _enabled(value: str) -> bool:
    return value.strip().lower() in _TRUE_WORDS


# ----------------------------------------------------------------------------- the seal schema


@rule(
    "PGT048",
    "error",
    "Seal key table reachable by another role than its owner",
    why="Whoever reads the key table signs seals for any tenant (and whoever writes it adds a key of their "
    "own): the seal then stops nothing that SQL run as that role attempts.",
    fix="REVOKE ALL ON TABLE pgtenancy_seal.keys FROM PUBLIC, app; (and keep its owner a role the app "
    "cannot become)",
)
def _key_table(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return  # PGT012 says it all
    for schema in snapshot.seal.schemas:
        problems, fixes = [], []
        if schema.keys_grantees:
            problems.append("privileges on it are granted to " + ", ".join(schema.keys_grantees))
            grantees = ", ".join(g if g == "PUBLIC" else _preparer.quote(g) for g in schema.keys_grantees)
            fixes.append(f"REVOKE ALL ON TABLE {_schema(schema)}.keys FROM {grantees};")
        if _reachable(snapshot, schema.keys_owner):
            problems.append(_owned_by(snapshot, schema.keys_owner))
            fixes.append(f"ALTER TABLE {_schema(schema)}.keys OWNER TO {_SAFE_OWNER};")
        elif schema.app_key_privileges:
            problems.append("the app role holds " + ", ".join(sorted(schema.app_key_privileges)))
        if problems:
            yield RULES["PGT048"].finding(
                "table " + schema.keys,
                "holds the seal keys and " + "; ".join(problems) + ": SQL the app runs can sign any tenant",
                fix=" ".join(fixes) or f"REVOKE ALL ON TABLE {_schema(schema)}.keys FROM {_app(snapshot)};",
            )


@rule(
    "PGT049",
    "error",
    "Seal key function executable by PUBLIC or the app role",
    why="add_key stores a key of the caller's choice: once it runs with its owner's rights (SECURITY "
    "DEFINER) or the app may write the key table, SQL the app runs adds a key of its own and signs seals "
    "for any tenant. Only the migration's role should execute it.",
    fix="REVOKE ALL ON FUNCTION pgtenancy_seal.add_key(text, bytea) FROM PUBLIC, app;",
)
def _add_key(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return
    for schema in snapshot.seal.schemas:
        if not (schema.add_key_public or schema.app_can_add_keys):
            continue
        function = f"{_schema(schema)}.add_key(text, bytea)"
        who = "PUBLIC" if schema.add_key_public else "the app role"
        if _reachable(snapshot, schema.add_key_owner):
            who, fix = (
                _owned_by(snapshot, schema.add_key_owner),
                f"ALTER FUNCTION {function} OWNER TO {_SAFE_OWNER};",
            )
        else:
            fix = f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC, {_app(snapshot)};"
        yield RULES["PGT049"].finding(
            "function " + schema.name + ".add_key(key_id text, secret bytea)",
            f"adds seal keys and {who} may execute it: SQL the app runs can add a key of its own",
            fix=fix,
        )


def _verifier_problems(snapshot: Snapshot, schema: SealSchema) -> tuple[list[str], list[str]]:
    """What is wrong with a seal schema's verifier, and the SQL that fixes each (where it is mechanical)."""
    verifier = schema.verifier
    if verifier is None:
        return [], []
    name = f"{_schema(schema)}.{seal_sql.VERIFIER}()"
    problems, fixes = [], []
    settings = verifier_settings(schema)
    if settings is None:
        problems.append(
            "its body is not the one op.create_tenant_seal writes (it was changed): it is not trusted"
        )
        fixes.append("op.create_tenant_seal(...) again, as the migration's role (it replaces the verifier);")
    elif settings[0] != snapshot.setting:
        problems.append(
            f"it verifies the setting {settings[0]!r}, not the audited {snapshot.setting!r} "
            f"(audit with --setting {settings[0]})"
        )
    if not verifier.security_definer:
        problems.append("it is not SECURITY DEFINER")
        fixes.append(f"ALTER FUNCTION {name} SECURITY DEFINER;")
    if PINNED_SEARCH_PATH not in verifier.config:
        problems.append("it does not pin search_path = pg_catalog, pg_temp")
        fixes.append(f"ALTER FUNCTION {name} SET search_path = pg_catalog, pg_temp;")
    if _reachable(snapshot, verifier.owner):
        problems.append(_owned_by(snapshot, verifier.owner) + ", so it can replace the body")
        fixes.append(f"ALTER FUNCTION {name} OWNER TO {_SAFE_OWNER};")
    return problems, fixes


@rule(
    "PGT050",
    "error",
    "Seal verifier changed, not SECURITY DEFINER, with an open search_path, or in the app role's hands",
    why="The verifier alone decides which tenant a sealed policy sees: it must be the body pgtenancy writes, "
    "run as its owner (the app role cannot read the keys) with search_path = pg_catalog, pg_temp (no "
    "function of the caller's in its way), and be owned by a role the app cannot become.",
    fix="op.create_tenant_seal(...) again as the migration's role; ALTER FUNCTION "
    "pgtenancy_seal.current_tenant() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;",
)
def _verifier(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return
    for schema in snapshot.seal.schemas:
        problems, fixes = _verifier_problems(snapshot, schema)
        if problems:
            yield RULES["PGT050"].finding(
                f"function {schema.name}.{seal_sql.VERIFIER}()",
                "is the seal verifier of schema " + schema.name + " but " + "; ".join(problems),
                fix=" ".join(fixes) or None,
            )


@rule(
    "PGT051",
    "error",
    "Seal schema owned by, or open to CREATE for, the app role",
    why="A schema's owner may drop the verifier and the key table and create its own in their place; CREATE "
    "lets the app add objects beside them. Either way SQL the app runs can make a seal verify.",
    fix="ALTER SCHEMA pgtenancy_seal OWNER TO migration_role; REVOKE CREATE ON SCHEMA pgtenancy_seal FROM "
    "PUBLIC, app;",
)
def _seal_schema(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return
    for schema in snapshot.seal.schemas:
        if _reachable(snapshot, schema.owner):
            yield RULES["PGT051"].finding(
                "schema " + schema.name,
                f"holds the seal keys and verifier and {_owned_by(snapshot, schema.owner)}: "
                "it can replace them",
                fix=f"ALTER SCHEMA {_schema(schema)} OWNER TO {_SAFE_OWNER};",
            )
        elif schema.app_can_create:
            yield RULES["PGT051"].finding(
                "schema " + schema.name,
                "holds the seal keys and verifier and the app role may CREATE objects in it",
                fix=f"REVOKE CREATE ON SCHEMA {_schema(schema)} FROM PUBLIC, {_app(snapshot)};",
            )


# ----------------------------------------------------------------------------- declared sealing


def _unsealed(snapshot: Snapshot, table: Relation) -> list[str]:
    """The policy expressions on ``table`` that admit rows without a verified seal, one phrase each."""
    found = []
    for policy in table.policies:
        if not (policy.permissive and policy.applies_to_app):
            continue
        for label, expression in (("USING", policy.using), ("WITH CHECK", policy.check)):
            if expression is None:
                continue
            analysis = policy_analysis(snapshot, table, expression, policy.functions)
            if not (analysis.sealed and analysis.bound):
                found.append(f"policy {policy.name} {label} ({expression})")
    return found


def _seal_fix(snapshot: Snapshot, table: Relation) -> str:
    """The migration operation, and the SQL, that seal ``table``'s pgtenancy policy."""
    verifiers = trusted_verifiers(snapshot)
    schema = verifiers[0].schema.name if verifiers else seal_sql.DEFAULT_SEAL_SCHEMA
    column = table.column(table.tenant_column or "")
    value = seal_sql.verifier_name(schema) + "()::" + (column.type if column else "uuid")
    predicate = f"{_preparer.quote(table.tenant_column or 'tenant_id')} = (SELECT {value})"
    target = _preparer.quote_schema(table.schema) + "." + _preparer.quote(table.name)
    arguments = [repr(table.name)]
    if table.tenant_column and table.tenant_column != "tenant_id":
        arguments.append(repr(table.tenant_column))
    if table.schema != "public":
        arguments.append(f"schema={table.schema!r}")
    key_type = {"bigint": "int", "integer": "int", "text": "str"}.get(column.type if column else "uuid")
    if key_type:
        arguments.append(f"key_type={key_type!r}")
    if schema != seal_sql.DEFAULT_SEAL_SCHEMA:
        arguments.append(f"seal_schema={schema!r}")
    return (
        f"op.seal_tenant_isolation({', '.join(arguments)}) in a migration "
        f"(ALTER POLICY pgtenancy_tenant_isolation ON {target} USING ({predicate}) WITH CHECK ({predicate});)"
    )


@rule(
    "PGT052",
    "error",
    "Tenant table not sealed although sealing is declared",
    why="A policy that reads the tenant setting itself trusts whatever SQL sets it: injected SQL that "
    "re-points the setting reads and writes another tenant's rows, the seal notwithstanding.",
    fix="op.seal_tenant_isolation('t') in a migration (every permissive policy compares the tenant column "
    "with (SELECT pgtenancy_seal.current_tenant()::uuid)).",
)
def _not_sealed(snapshot: Snapshot) -> Iterator[Finding]:
    if not snapshot.sealing_declared:
        return
    for table in snapshot.isolated_tables():
        if not table.app_privileges:
            continue  # the app cannot reach it (PGT047); a partition is reached through its parent
        found = _unsealed(snapshot, table)
        if found:
            yield RULES["PGT052"].finding(
                "table " + table.qualified,
                "is not sealed: " + "; ".join(found) + " admits rows without a verified seal",
                fix=_seal_fix(snapshot, table),
            )


@rule(
    "PGT053",
    "error",
    "Sealing declared but no seal verifier found",
    why="Without pgtenancy's verifier no policy can be sealed: every tenant table trusts the setting alone.",
    fix="op.create_tenant_seal() and op.add_tenant_seal_key(...) in a migration, then seal every table.",
)
def _no_verifier(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.sealing_declared and not trusted_verifiers(snapshot):
        shown = ", ".join(s.name for s in snapshot.seal.schemas)
        yield RULES["PGT053"].finding(
            "database " + snapshot.database.name,
            "has no seal verifier pgtenancy trusts for "
            + repr(snapshot.setting)
            + (f" (the one in {shown} is not: see PGT050)" if shown else ""),
        )


# ----------------------------------------------------------------------------- where seals can be read


def _stored_fix(snapshot: Snapshot, stored: RoleSetting | None, parameter: str) -> str:
    """ALTER ROLE ... SET parameter = off, where it beats the stored default that turns it on."""
    target = "ROLE " + _app(snapshot)
    if stored is not None and stored.role is not None and stored.database is not None:
        target += " IN DATABASE " + _preparer.quote(stored.database)
    return f"ALTER {target} SET {parameter} = off;"


@rule(
    "PGT054",
    "warning",
    "The app role's statements, seals included, show in pg_stat_activity",
    why="Another session of the app role (SQL injected into another request) reads each statement's text in "
    "pg_stat_activity, the SET LOCAL of a seal included; on a pooled connection that seal verifies again, "
    "for its tenant, until it expires.",
    fix="op.hide_tenant_activity('app') in a migration (ALTER ROLE app SET track_activities = off;)",
)
def _activity(snapshot: Snapshot) -> Iterator[Finding]:
    if not _sealed_tables(snapshot):
        return
    stored = snapshot.login_setting("track_activities")
    if not (_enabled(stored.value) if stored is not None else snapshot.seal.track_activities):
        return
    where = "by default" if stored is None else f"(stored for {stored.role or 'every role'})"
    yield RULES["PGT054"].finding(
        "role " + snapshot.app.name,
        f"has track_activities on {where} while tenant tables are sealed: its seals are readable in "
        "pg_stat_activity while they are valid",
        fix=f"op.hide_tenant_activity({snapshot.app.name!r}) in a migration "
        f"({_stored_fix(snapshot, stored, 'track_activities')})",
    )


@rule(
    "PGT055",
    "warning",
    "pg_stat_statements keeps the text of SET statements, seals included",
    why="With pg_stat_statements.track_utility on, each SET LOCAL of a seal is stored with its text, for "
    "the app role (and pg_read_all_stats) to read back while the seal is valid.",
    fix="op.hide_tenant_activity('app') in a migration "
    "(ALTER ROLE app SET pg_stat_statements.track_utility = off;)",
)
def _statements(snapshot: Snapshot) -> Iterator[Finding]:
    if not snapshot.seal.statements_tracked or not (snapshot.sealing_declared or _sealed_tables(snapshot)):
        return
    stored = snapshot.login_setting("pg_stat_statements.track_utility")
    value = stored.value if stored is not None else snapshot.seal.track_utility
    if value is None or not _enabled(value):
        return  # unset: the library is not loaded in this server, so it keeps nothing
    yield RULES["PGT055"].finding(
        "setting pg_stat_statements.track_utility",
        "is on for the app role's sessions and pg_stat_statements is installed: each seal's SET LOCAL is "
        "kept with its text",
        fix=f"op.hide_tenant_activity({snapshot.app.name!r}) in a migration "
        f"({_stored_fix(snapshot, stored, 'pg_stat_statements.track_utility')})",
    )
