"""Static rules: each reads the catalog snapshot and names the holes between tenants it finds."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import ClauseElement, String, bindparam, text
from sqlalchemy.dialects import postgresql

from pgtenancy import citus
from pgtenancy.audit.expressions import Analysis, analyse, table_expression
from pgtenancy.audit.findings import Finding, Rule, Severity
from pgtenancy.audit.sealing import sealed_names, trusted_verifiers
from pgtenancy.catalog.snapshot import ForeignKey, Function, Policy, Relation, Snapshot, call_names
from pgtenancy.predicate import tenant_predicate_sql

__all__ = ["RULES", "CatalogRule", "policy_analysis", "rule", "run_rules"]

Check = Callable[[Snapshot], Iterator[Finding]]
_dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
_preparer = _dialect.identifier_preparer


@dataclass(frozen=True)
class CatalogRule(Rule):
    """A rule checked by reading the catalog alone."""

    check: Check


RULES: dict[str, CatalogRule] = {}


def rule(rule_id: str, severity: Severity, title: str, *, why: str, fix: str) -> Callable[[Check], Check]:
    """Register the decorated check as rule ``rule_id``; its findings carry the rule's id and severity."""

    def register(check: Check) -> Check:
        RULES[rule_id] = CatalogRule(rule_id, severity, title, why, fix, check)
        return check

    return register


def run_rules(snapshot: Snapshot) -> list[Finding]:
    """Every finding of every static rule, each fact once (two checks may reach the same one)."""
    findings: dict[tuple[str, str, str], Finding] = {}
    for registered in RULES.values():
        for finding in registered.check(snapshot):
            findings.setdefault((finding.rule, finding.object, finding.message), finding)
    return list(findings.values())


# ----------------------------------------------------------------------------- expression analysis


def policy_analysis(
    snapshot: Snapshot, table: Relation, expression: str, functions: Iterable[int]
) -> Analysis:
    """What ``expression`` on ``table`` admits, following the policy functions ``functions`` (oids)."""
    column = table.column(table.tenant_column or "")
    return _analyse(
        expression,
        snapshot.setting,
        table.tenant_column or "tenant_id",
        column.type if column else "uuid",
        snapshot.app.name,
        _definitions(snapshot, functions),
        sealed_names(snapshot),
    )


@functools.lru_cache(maxsize=4096)
def _analyse(
    expression: str,
    setting: str,
    column: str,
    column_type: str,
    role: str,
    definitions: tuple[tuple[str, str], ...],
    sealed: tuple[str, ...],
) -> Analysis:
    """The analysis, once per distinct expression and table shape (tables often share one policy)."""
    found = dict(definitions)
    return analyse(
        expression,
        setting=setting,
        column=column,
        column_type=column_type,
        role=role,
        resolve=found.get,
        sealed=sealed,
    )


def _definitions(snapshot: Snapshot, oids: Iterable[int]) -> tuple[tuple[str, str], ...]:
    """Each function's definition by the names a printed expression calls it: the policy's own functions
    (qualified, and bare), over every other function read, for the calls inside their bodies."""
    own = [snapshot.functions[oid] for oid in set(oids) if oid in snapshot.functions]
    if not own:
        return snapshot.function_bodies
    return tuple(sorted({**dict(snapshot.function_bodies), **call_names(own)}.items()))


def _guarded(snapshot: Snapshot, table: Relation, policy: Policy, *, check: bool) -> bool:
    """Whether the restrictive policies (AND-ed with the permissive ones) bind this command to the tenant."""
    others = [
        other
        for other in table.policies
        if not other.permissive and other.applies_to_app and other.command in ("*", policy.command)
    ]
    restrictive = [e for o in others if (e := (o.check or o.using) if check else o.using) is not None]
    if not restrictive:
        return False
    functions = [oid for other in others for oid in other.functions]
    return policy_analysis(snapshot, table, table_expression(["true"], restrictive), functions).bound


def _policy_functions(snapshot: Snapshot, policy: Policy) -> list[Function]:
    return [snapshot.functions[oid] for oid in policy.functions if oid in snapshot.functions]


def _open_expressions(snapshot: Snapshot) -> Iterator[tuple[Relation, Policy, str, str, Analysis]]:
    """(table, policy, USING or WITH CHECK, expression, analysis) of permissive policies no restrictive one
    closes: what the policy rules judge."""
    for table, policy in _tables_with_policies(snapshot):
        if not policy.permissive:
            continue
        for label, expression, check in (("USING", policy.using, False), ("WITH CHECK", policy.check, True)):
            if expression is not None and not _guarded(snapshot, table, policy, check=check):
                yield (
                    table,
                    policy,
                    label,
                    expression,
                    policy_analysis(snapshot, table, expression, policy.functions),
                )


# ----------------------------------------------------------------------------- naming and fixes


def _table(relation: Relation) -> str:
    return _preparer.quote_schema(relation.schema) + "." + _preparer.quote(relation.name)


def _policy_object(table: Relation, policy: Policy) -> str:
    return "policy " + policy.name + " on " + table.qualified


def _role(name: str) -> str:
    return _preparer.quote(name)


def _tenant_predicate(snapshot: Snapshot, table: Relation) -> str:
    """The canonical tenant predicate; with Citus, without the (SELECT ...) wrapper its tables refuse."""
    column = table.column(table.tenant_column or "")
    return tenant_predicate_sql(
        _preparer.quote(table.tenant_column or "tenant_id"),
        snapshot.setting,
        citus=snapshot.citus_tables is not None,
        sql_type=column.type if column else None,
    )


def _literal_sql(statement: ClauseElement) -> str:
    """A statement with its bound values rendered as SQL literals, to show as a fix."""
    return str(statement.compile(dialect=_dialect, compile_kwargs={"literal_binds": True})) + ";"


def _alter_policy(table: Relation, policy: Policy) -> str:
    return "ALTER POLICY " + _preparer.quote(policy.name) + " ON " + _table(table)


def _rewrite_policy(snapshot: Snapshot, table: Relation, policy: Policy) -> str:
    """The fix that replaces both expressions of a policy with the canonical tenant predicate."""
    predicate = _tenant_predicate(snapshot, table)
    if policy.command in ("r", "d"):
        return f"{_alter_policy(table, policy)} USING ({predicate});"
    if policy.command == "a":
        return f"{_alter_policy(table, policy)} WITH CHECK ({predicate});"
    return f"{_alter_policy(table, policy)} USING ({predicate}) WITH CHECK ({predicate});"


def _tables_with_policies(snapshot: Snapshot) -> Iterator[tuple[Relation, Policy]]:
    """(table, policy) for every policy on an isolated table that applies to the app role."""
    for table in snapshot.isolated_tables():
        for policy in table.policies:
            if policy.applies_to_app:
                yield table, policy


# ----------------------------------------------------------------------------- tables


@rule(
    "PGT001",
    "error",
    "Tenant table without row-level security",
    why="Without RLS every query that forgets its tenant filter reads and writes every tenant's rows.",
    fix="ALTER TABLE t ENABLE ROW LEVEL SECURITY; ALTER TABLE t FORCE ROW LEVEL SECURITY; a tenant policy",
)
def _rls_disabled(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if table.partition and not table.app_privileges:
            continue  # reached only through its parent, whose policies apply
        if not table.rls:
            name = _table(table)
            yield RULES["PGT001"].finding(
                "table " + table.qualified,
                f"has tenant column {table.tenant_column!r} but row-level security is disabled",
                fix=f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY; "
                f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY;",
            )


@rule(
    "PGT002",
    "error",
    "Row-level security not forced on a table the app role owns",
    why="A table's owner skips its policies unless RLS is FORCEd, so an owning app role sees every tenant.",
    fix="ALTER TABLE t FORCE ROW LEVEL SECURITY (and connect as a role that does not own the table).",
)
def _not_forced(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if table.rls and not table.force and table.owner in snapshot.app.inherits:
            yield RULES["PGT002"].finding(
                "table " + table.qualified,
                f"is owned by {snapshot.roles[table.owner].name!r}, whose privileges the app role holds, "
                "and RLS is not forced: its policies do not apply to the app",
                fix=f"ALTER TABLE {_table(table)} FORCE ROW LEVEL SECURITY;",
            )


@rule(
    "PGT003",
    "info",
    "Row-level security enabled but no policy for the app role",
    why="With no permissive policy the app sees no rows and cannot write: closed, not a leak, but usually "
    "a forgotten policy.",
    fix="CREATE POLICY tenant_isolation ON t USING (<tenant predicate>) WITH CHECK (<tenant predicate>);",
)
def _no_policy(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if table.rls and not any(p.permissive and p.applies_to_app for p in table.policies):
            predicate = _tenant_predicate(snapshot, table)
            yield RULES["PGT003"].finding(
                "table " + table.qualified,
                "has row-level security enabled but no permissive policy applies to the app role "
                "(every row is hidden from it)",
                fix=f"CREATE POLICY tenant_isolation ON {_table(table)} "
                f"USING ({predicate}) WITH CHECK ({predicate});",
            )


# ----------------------------------------------------------------------------- policies


@rule(
    "PGT004",
    "info",
    "Write policy without an explicit WITH CHECK",
    why="PostgreSQL then checks new rows with USING; writing it out keeps a later USING change from "
    "silently loosening writes.",
    fix="ALTER POLICY p ON t WITH CHECK (<same tenant predicate as USING>);",
)
def _missing_check(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy in _tables_with_policies(snapshot):
        if policy.permissive and policy.command in ("*", "w") and policy.check is None and policy.using:
            yield RULES["PGT004"].finding(
                _policy_object(table, policy),
                "has no WITH CHECK: new rows are checked with its USING expression",
                fix=f"{_alter_policy(table, policy)} WITH CHECK ({policy.using});",
            )


@rule(
    "PGT005",
    "error",
    "WITH CHECK (true)",
    why="Permissive policies are OR-ed: a write policy checking true lets the app write rows for any tenant.",
    fix="ALTER POLICY p ON t WITH CHECK (<tenant predicate>);",
)
def _check_true(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, label, expression, analysis in _open_expressions(snapshot):
        if label == "WITH CHECK" and analysis.always_true:
            shown = (
                "(true)"
                if expression.strip("() ").lower() == "true"
                else f"({expression}), true for every row"
            )
            yield RULES["PGT005"].finding(
                _policy_object(table, policy),
                f"has WITH CHECK {shown}: the app can insert or move rows into any tenant",
                fix=f"{_alter_policy(table, policy)} WITH CHECK ({_tenant_predicate(snapshot, table)});",
            )


@rule(
    "PGT006",
    "error",
    "Permissive policy not bound to the tenant",
    why="Permissive policies are OR-ed: one that is always true, or that never reads the tenant setting, "
    "opens the whole table.",
    fix="Drop the policy, or make it compare the tenant column with the setting (or make it RESTRICTIVE).",
)
def _unbound_policy(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, label, expression, analysis in _open_expressions(snapshot):
        if label != "USING":
            continue
        if analysis.always_true:
            shown = (
                "(true)"
                if expression.strip("() ").lower() == "true"
                else f"({expression}), true for every row"
            )
            message = f"is USING {shown}: it shows every tenant's rows"
        elif not analysis.reads_setting:
            message = (
                f"never reads {snapshot.setting!r} (directly or through a function): it isolates nothing"
            )
        else:
            continue
        yield RULES["PGT006"].finding(
            _policy_object(table, policy),
            message,
            fix=f"DROP POLICY {_preparer.quote(policy.name)} ON {_table(table)};",
        )


@rule(
    "PGT007",
    "error",
    "Fail-open tenant predicate",
    why="A predicate that admits other tenants' rows when no tenant is bound (IS NULL, = '', a COALESCE "
    "default) or beside the bound one (OR another condition) turns a missing tenant into access to every "
    "tenant.",
    fix="USING (and WITH CHECK) (tenant_id = "
    "(SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))",
)
def _fail_open(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, label, expression, analysis in _open_expressions(snapshot):
        if analysis.always_true or (label == "USING" and not analysis.reads_setting):
            continue  # PGT005 / PGT006 say it
        own = [o.reason for o in analysis.openings if not o.inputs and not o.functions]
        if own:
            yield RULES["PGT007"].finding(
                _policy_object(table, policy),
                f"{label} ({expression}) fails open: " + "; ".join(own),
                fix=f"{_alter_policy(table, policy)} {label} ({_tenant_predicate(snapshot, table)});",
            )


@rule(
    "PGT008",
    "warning",
    "Tenant setting read without NULLIF(..., '')",
    why="After COMMIT on a pooled connection the setting reads '' (not NULL): the cast fails for uuid/int "
    "keys, and a text key matches rows whose tenant is ''.",
    fix="NULLIF(current_setting('app.current_tenant_id', true), '')::uuid",
)
def _missing_nullif(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, expression in _policy_expressions(snapshot):
        analysis = policy_analysis(snapshot, table, expression, policy.functions)
        if analysis.empty_setting_fails or analysis.empty_tenant_rows:
            hazards = [r for r in analysis.reasons if "reset to '' a cast" in r or "whose tenant is ''" in r]
            yield RULES["PGT008"].finding(
                _policy_object(table, policy),
                f"reads {snapshot.setting!r} without NULLIF(..., ''): ({expression}): " + "; ".join(hazards),
                fix=_rewrite_policy(snapshot, table, policy),
            )


@rule(
    "PGT009",
    "info",
    "Tenant setting read once per row",
    why="Without the (SELECT ...) wrapper the setting is read and cast for every row; wrapped, PostgreSQL "
    "evaluates it once per query (an initPlan) and can use an index on the tenant column.",
    fix="tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)",
)
def _unwrapped_setting(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.citus_tables is not None:
        return  # Citus refuses the wrapper on its tables, and tenant tables belong there (PGT026)
    for table, policy, expression in _policy_expressions(snapshot):
        if policy_analysis(snapshot, table, expression, policy.functions).per_row:
            yield RULES["PGT009"].finding(
                _policy_object(table, policy),
                f"reads {snapshot.setting!r} outside a scalar subquery: ({expression})",
                fix=_rewrite_policy(snapshot, table, policy),
            )


def _policy_expressions(snapshot: Snapshot) -> Iterator[tuple[Relation, Policy, str]]:
    """Each distinct expression of the policies that apply to the app role."""
    for table, policy in _tables_with_policies(snapshot):
        for expression in dict.fromkeys(e for e in (policy.using, policy.check) if e):
            yield table, policy, expression


@rule(
    "PGT010",
    "warning",
    "Policy function that may fail open",
    why="A policy is only as strict as the function it calls: a body that does not read the tenant setting "
    "or accepts a missing tenant opens the table.",
    fix="Make the function compare with NULLIF(current_setting('app.current_tenant_id', true), '') "
    "and return false when no tenant is bound.",
)
def _policy_function_body(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, _, _, analysis in _open_expressions(snapshot):
        signatures: dict[str, str] = {}
        for function in _policy_functions(snapshot, policy):
            signatures[function.schema + "." + function.name + "()"] = function.signature
            signatures.setdefault(function.name + "()", function.signature)
        through: dict[str, list[str]] = {}
        for opening in analysis.openings:
            for name in opening.functions:
                through.setdefault(signatures.get(name, name), []).append(opening.reason)
        for signature, reasons in through.items():
            yield RULES["PGT010"].finding(
                _policy_object(table, policy),
                f"calls {signature}, whose body opens the policy: " + "; ".join(reasons),
            )


@rule(
    "PGT011",
    "info",
    "Policy goes through a function",
    why="The function body decides isolation and is easy to change without touching the policy; keep it "
    "small, STABLE, and covered by the dynamic probes.",
    fix="Prefer the inline predicate; otherwise keep the function STABLE, SECURITY INVOKER and reviewed.",
)
def _policy_function(snapshot: Snapshot) -> Iterator[Finding]:
    verifiers = {v.schema.verifier.oid for v in trusted_verifiers(snapshot) if v.schema.verifier}
    for table, policy in _tables_with_policies(snapshot):
        for function in _policy_functions(snapshot, policy):
            if function.oid in verifiers:
                continue  # pgtenancy's own seal verifier, compared with what it writes (PGT050)
            yield RULES["PGT011"].finding(
                _policy_object(table, policy), f"calls {function.signature} (its body was audited too)"
            )


@rule(
    "PGT028",
    "error",
    "Policy trusts a client-settable input",
    why="Any statement the app sends can set application_name or a custom setting such as app.is_admin: "
    "a policy that opens for such a value opens for whoever sets it.",
    fix="Grant wider access by role (a policy TO an admin role the app cannot become), never by a value "
    "the client can set.",
)
def _client_input(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, label, expression, analysis in _open_expressions(snapshot):
        trusted = [o for o in analysis.openings if o.inputs]
        if trusted:
            inputs = sorted({i for o in trusted for i in o.inputs})
            yield RULES["PGT028"].finding(
                _policy_object(table, policy),
                f"{label} ({expression}) admits rows of other tenants when the client sets "
                f"{', '.join(inputs)}: " + "; ".join(o.reason for o in trusted),
            )


@rule(
    "PGT029",
    "warning",
    "Policy expression cannot be analysed",
    why="Whether the policy admits other tenants' rows depends on something the analysis does not model "
    "(a subquery, a function it cannot read, an operator such as LIKE): only a review and the dynamic "
    "probes can tell.",
    fix="Prefer the canonical tenant predicate, AND-ed with any further condition; otherwise review the "
    "expression and keep the dynamic probes in CI.",
)
def _unanalysable(snapshot: Snapshot) -> Iterator[Finding]:
    for table, policy, label, expression, analysis in _open_expressions(snapshot):
        if analysis.unanalysable is not None:
            yield RULES["PGT029"].finding(
                _policy_object(table, policy), f"{label} ({expression}): {analysis.unanalysable}"
            )


# ----------------------------------------------------------------------------- roles


@rule(
    "PGT012",
    "error",
    "App role is a superuser",
    why="Row-level security never applies to superusers.",
    fix="ALTER ROLE app NOSUPERUSER;",
)
def _app_superuser(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        yield RULES["PGT012"].finding(
            "role " + snapshot.app.name,
            "is a superuser",
            fix=f"ALTER ROLE {_role(snapshot.app.name)} NOSUPERUSER;",
        )


@rule(
    "PGT013",
    "error",
    "App role has BYPASSRLS",
    why="BYPASSRLS skips every policy.",
    fix="ALTER ROLE app NOBYPASSRLS;",
)
def _app_bypassrls(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.bypassrls:
        yield RULES["PGT013"].finding(
            "role " + snapshot.app.name,
            "has BYPASSRLS",
            fix=f"ALTER ROLE {_role(snapshot.app.name)} NOBYPASSRLS;",
        )


@rule(
    "PGT014",
    "error",
    "App role is a member of a superuser or BYPASSRLS role",
    why="Any statement the app runs can SET ROLE to that role and read every tenant.",
    fix="REVOKE admin_role FROM app;",
)
def _app_member_of_bypassing(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return  # a superuser is a member of every role; PGT012 already says it all
    for oid in sorted(snapshot.app.member_of - {snapshot.app.oid}):
        role = snapshot.roles[oid]
        if role.bypasses:
            kind = "a superuser" if role.superuser else "BYPASSRLS"
            yield RULES["PGT014"].finding(
                "role " + snapshot.app.name,
                f"is a member of {role.name!r} ({kind}): SET ROLE escapes row-level security",
                fix=f"REVOKE {_role(role.name)} FROM {_role(snapshot.app.name)};",
            )


@rule(
    "PGT015",
    "error",
    "App role owns a tenant table",
    why="An owner can ALTER TABLE ... DISABLE ROW LEVEL SECURITY or drop the policies from any statement.",
    fix="ALTER TABLE t OWNER TO schema_owner; (a role the app is not a member of)",
)
def _app_owns(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.superuser:
        return
    for table in snapshot.isolated_tables():
        if table.owner == snapshot.app.oid or table.owner in snapshot.app.member_of:
            owner = snapshot.roles[table.owner].name
            yield RULES["PGT015"].finding(
                "table " + table.qualified,
                f"is owned by {owner!r}, which the app role is or can become: it can switch isolation off",
                fix=f"ALTER TABLE {_table(table)} OWNER TO <schema owner role>;",
            )


@rule(
    "PGT016",
    "info",
    "A role that bypasses RLS holds privileges on tenant tables",
    why="Whoever connects as it reads every tenant: the admin and reporting pattern, as long as the app role "
    "cannot become it (that is PGT014). Listed so the inventory is known; declare it with --admin-role.",
    fix="pgtenancy check --admin-role admin_role ... (or REVOKE ALL ON t FROM admin_role)",
)
def _bypassing_grantees(snapshot: Snapshot) -> Iterator[Finding]:
    tables: dict[str, list[str]] = {}
    for table in snapshot.isolated_tables():
        for grantee in table.bypass_grantees:
            tables.setdefault(grantee, []).append(table.qualified)
    for grantee, names in sorted(tables.items()):
        if grantee == snapshot.app.name or grantee in snapshot.admin_roles:
            continue  # the app role itself is PGT012/PGT013; a declared admin role is known
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        yield RULES["PGT016"].finding(
            "role " + grantee,
            f"bypasses row-level security and holds privileges on {len(names)} tenant table(s): {shown}",
            fix=f"pgtenancy check --admin-role {_role(grantee)} ... (if it is an admin tool's role)",
        )


# ----------------------------------------------------------------------------- views and functions


@rule(
    "PGT017",
    "error",
    "View reads a tenant table as a role that bypasses RLS",
    why="A view runs with its owner's rights unless security_invoker is set; an owner that bypasses RLS "
    "(superuser, BYPASSRLS, unforced table owner) shows every tenant's rows to the app.",
    fix="ALTER VIEW v SET (security_invoker = true);",
)
def _definer_views(snapshot: Snapshot) -> Iterator[Finding]:
    for view in snapshot.relations.values():
        if view.kind != "v" or view.security_invoker or "SELECT" not in view.app_privileges:
            continue
        leaking = _readable_tables(snapshot, view.owner, snapshot.base_tables(view))
        if leaking:
            yield RULES["PGT017"].finding(
                "view " + view.qualified,
                f"reads {', '.join(leaking)} as {snapshot.roles[view.owner].name!r}, which bypasses their "
                "RLS, and the app role can select from it",
                fix=f"ALTER VIEW {_table(view)} SET (security_invoker = true);",
            )


def _readable_tables(snapshot: Snapshot, owner: int, oids: set[int]) -> list[str]:
    """The isolated tables among ``oids`` whose policies do not apply to ``owner``."""
    tables = [snapshot.relations[oid] for oid in sorted(oids) if oid in snapshot.relations]
    return [t.qualified for t in tables if t.isolated and snapshot.bypasses_rls_of(owner, t)]


@rule(
    "PGT018",
    "error",
    "Materialized view over a tenant table readable by the app role",
    why="Materialized views have no row-level security: they hold every tenant's rows.",
    fix="REVOKE SELECT ON mv FROM app; (or replace it with a security_invoker view or a tenant table)",
)
def _materialized_views(snapshot: Snapshot) -> Iterator[Finding]:
    for view in snapshot.relations.values():
        if view.kind != "m" or "SELECT" not in view.app_privileges:
            continue
        tables = [
            snapshot.relations[oid] for oid in sorted(snapshot.base_tables(view)) if oid in snapshot.relations
        ]
        isolated = [t.qualified for t in tables if t.isolated]
        if isolated:
            yield RULES["PGT018"].finding(
                "materialized view " + view.qualified,
                f"copies rows of {', '.join(isolated)} and the app role can select from it",
                fix=f"REVOKE SELECT ON {_table(view)} FROM {_role(snapshot.app.name)};",  # noqa: S608 - shown, not run
            )


@rule(
    "PGT019",
    "error",
    "SECURITY DEFINER function reads a tenant table",
    why="It runs as its owner: if the owner bypasses RLS, any tenant calling it reads other tenants' rows.",
    fix="ALTER FUNCTION f SECURITY INVOKER; (or REVOKE EXECUTE ON FUNCTION f FROM app, PUBLIC)",
)
def _definer_functions(snapshot: Snapshot) -> Iterator[Finding]:
    for function in snapshot.functions.values():
        if not (function.security_definer and function.app_can_execute):
            continue
        leaking = _readable_tables(snapshot, function.owner, snapshot.tables_read(function))
        if leaking:
            yield RULES["PGT019"].finding(
                "function " + function.signature,
                f"is SECURITY DEFINER, reads {', '.join(leaking)} as {snapshot.roles[function.owner].name!r} "
                "(which bypasses their RLS) and the app role can execute it",
                fix=f"ALTER FUNCTION {_function(function)} SECURITY INVOKER;",
            )


def _function(function: Function) -> str:
    return (
        _preparer.quote_schema(function.schema)
        + "."
        + _preparer.quote(function.name)
        + "("
        + function.arguments
        + ")"
    )


@rule(
    "PGT020",
    "warning",
    "User-defined LEAKPROOF function",
    why="LEAKPROOF lets the planner run a function on rows before the policy filters them: one that raises "
    "or logs its arguments shows other tenants' values.",
    fix="ALTER FUNCTION f NOT LEAKPROOF;",
)
def _leakproof(snapshot: Snapshot) -> Iterator[Finding]:
    for function in snapshot.functions.values():
        if function.leakproof:
            yield RULES["PGT020"].finding(
                "function " + function.signature,
                "is marked LEAKPROOF: it sees rows before row-level security filters them",
                fix=f"ALTER FUNCTION {_function(function)} NOT LEAKPROOF;",
            )


# ----------------------------------------------------------------------------- keys, grants, indexes


@rule(
    "PGT021",
    "warning",
    "Unique constraint without the tenant column",
    why="Uniqueness is checked across all tenants: a duplicate-key error tells one tenant that another "
    "tenant's row exists (an existence oracle), and tenants cannot reuse each other's keys.",
    fix="Make the key composite: UNIQUE (tenant_id, ...) / PRIMARY KEY (tenant_id, id).",
)
def _unique_without_tenant(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if not table.app_privileges & {"INSERT", "UPDATE"}:
            continue  # a key the app role cannot write raises no duplicate-key error for it: no oracle
        for index in table.indexes:
            if index.unique and table.tenant_column not in index.columns:
                yield RULES["PGT021"].finding(
                    "table " + table.qualified,
                    f"unique index {index.name} on ({', '.join(c or '<expression>' for c in index.columns)}) "
                    f"does not include {table.tenant_column!r}",
                )


@rule(
    "PGT022",
    "warning",
    "Foreign key to a tenant table without the tenant column",
    why="Foreign-key checks bypass RLS: a row can point at another tenant's row, and the error or success "
    "of the insert tells whether that row exists.",
    fix="FOREIGN KEY (tenant_id, parent_id) REFERENCES parent (tenant_id, id)",
)
def _foreign_key_without_tenant(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        for key in table.foreign_keys:
            if key.references_tenant_table and table.tenant_column not in key.columns:
                yield RULES["PGT022"].finding(
                    "table " + table.qualified,
                    f"foreign key {key.name} ({', '.join(key.columns)}) references tenant table "
                    f"{key.references} without {table.tenant_column!r}",
                )


@rule(
    "PGT047",
    "info",
    "Tenant table the app role holds no privilege on",
    why="Closed, not a leak: the app gets 'permission denied' on it at run time. Usually a new table whose "
    "migration isolated it but did not grant the app role access.",
    fix="op.grant_tenant_access('app', 't') in the table's migration "
    "(GRANT SELECT, INSERT, UPDATE, DELETE ON t TO app;)",
)
def _not_granted(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.app.bypasses:
        return
    for table in snapshot.isolated_tables():
        if not table.partition and not table.app_privileges & {"SELECT", "INSERT", "UPDATE", "DELETE"}:
            yield RULES["PGT047"].finding(
                "table " + table.qualified,
                "is a tenant table the app role may not read or write: its queries get permission denied",
                fix=f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_table(table)} TO {_role(snapshot.app.name)};",
            )


@rule(
    "PGT023",
    "error",
    "TRUNCATE granted to the app role on a tenant table",
    why="TRUNCATE ignores row-level security: one statement empties every tenant.",
    fix="REVOKE TRUNCATE ON t FROM app;",
)
def _truncate_granted(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if "TRUNCATE" in table.app_privileges:
            yield RULES["PGT023"].finding(
                "table " + table.qualified,
                "the app role may TRUNCATE it, which empties every tenant",
                fix=f"REVOKE TRUNCATE ON {_table(table)} FROM {_role(snapshot.app.name)};",
            )


@rule(
    "PGT024",
    "warning",
    "REFERENCES or TRIGGER granted to the app role on a tenant table",
    why="REFERENCES lets the app build a foreign key that probes other tenants' keys; TRIGGER lets it run "
    "code on every tenant's writes.",
    fix="REVOKE REFERENCES, TRIGGER ON t FROM app;",
)
def _references_or_trigger(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        granted = sorted(table.app_privileges & {"REFERENCES", "TRIGGER"})
        if granted:
            yield RULES["PGT024"].finding(
                "table " + table.qualified,
                f"the app role holds {' and '.join(granted)}",
                fix=f"REVOKE {', '.join(granted)} ON {_table(table)} FROM {_role(snapshot.app.name)};",
            )


@rule(
    "PGT025",
    "warning",
    "No index leading with the tenant column",
    why="Every query filters on the tenant column through the policy: without an index it scans all tenants.",
    fix="CREATE INDEX ON t (tenant_id);",
)
def _missing_tenant_index(snapshot: Snapshot) -> Iterator[Finding]:
    for table in snapshot.isolated_tables():
        if not any(index.columns[:1] == (table.tenant_column,) for index in table.indexes):
            column = _preparer.quote(table.tenant_column or "")
            yield RULES["PGT025"].finding(
                "table " + table.qualified,
                f"has no index whose first column is {table.tenant_column!r}",
                fix=f"CREATE INDEX ON {_table(table)} ({column});",
            )


# ----------------------------------------------------------------------------- Citus

_COLOCATE = text(
    "SELECT update_distributed_table_colocation(CAST(:table AS regclass), colocate_with => :parent)"
)
_DISTRIBUTE_WITH = text(
    "SELECT create_distributed_table(CAST(:table AS regclass), :column, colocate_with => :parent)"
)


def _distribution_text(snapshot: Snapshot, table: Relation) -> str:
    """How Citus holds ``table``, for a message."""
    held = snapshot.citus_table(table.oid)
    if held is None:
        return "is a plain table on the coordinator"
    if held.kind == "distributed":
        return f"is distributed by {held.column!r}"
    return f"is a Citus {held.kind} table"


@rule(
    "PGT026",
    "warning",
    "Tenant table not distributed by its tenant column",
    why="In a Citus database a tenant table left on the coordinator, or distributed by another column, does "
    "not spread with the tenants: a tenant's rows are not in one shard, and the tables that reference it "
    "cannot be co-located with it.",
    fix="SELECT create_distributed_table('t', 'tenant_id');",
)
def _not_distributed_by_tenant(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.citus_tables is None:
        return
    for table in snapshot.isolated_tables():
        if not table.rls or table.partition:
            continue  # a partition is distributed with its parent
        held = snapshot.citus_table(table.oid)
        column = table.tenant_column or "tenant_id"
        if held is not None and held.kind == "distributed" and held.column == column:
            continue
        fix = _literal_sql(citus.distributed_table_sql(table.name, column, schema=table.schema))
        if held is not None:
            fix = _literal_sql(citus.undistribute_table_sql(table.name, schema=table.schema)) + " " + fix
        yield RULES["PGT026"].finding(
            "table " + table.qualified,
            f"{_distribution_text(snapshot, table)}, not distributed by its tenant column {column!r}",
            fix=fix,
        )


@rule(
    "PGT027",
    "warning",
    "Foreign key to a distributed table that is not co-located",
    why="Citus keeps a foreign key, and joins along it, inside one shard only when both tables are "
    "distributed by the tenant column in one co-location group; otherwise they depend on rows held "
    "elsewhere, and moving one table's shards without the other's can break the key.",
    fix="SELECT update_distributed_table_colocation('child', colocate_with => 'parent'); "
    "(or distribute the child by its tenant column with colocate_with => 'parent')",
)
def _foreign_key_not_colocated(snapshot: Snapshot) -> Iterator[Finding]:
    if snapshot.citus_tables is None:
        return
    for table in snapshot.isolated_tables():
        held = snapshot.citus_table(table.oid)
        for key in table.foreign_keys:
            target = snapshot.citus_table(key.references_oid)
            if target is None or target.kind != "distributed":
                continue
            distributed = held is not None and held.kind == "distributed"
            if held is not None and distributed and held.colocation == target.colocation:
                continue
            where = "is in another co-location group" if distributed else _distribution_text(snapshot, table)
            yield RULES["PGT027"].finding(
                "table " + table.qualified,
                f"foreign key {key.name} references distributed table {key.references}, "
                f"but this table {where}",
                fix=_colocation_fix(table, key, distributed=distributed),
            )


def _colocation_fix(table: Relation, key: ForeignKey, *, distributed: bool) -> str:
    """SQL that puts ``table`` in the co-location group of the table ``key`` references."""
    child = bindparam("table", _table(table), type_=String)
    parent = bindparam("parent", key.references, type_=String)
    if distributed:
        return _literal_sql(_COLOCATE.bindparams(child, parent))
    column = bindparam("column", table.tenant_column or "tenant_id", type_=String)
    return _literal_sql(_DISTRIBUTE_WITH.bindparams(child, column, parent))
