"""Static rules: every hole class fires its rule id, and a correct schema gives no error or warning."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pgtenancy.audit import PROBE_RULES, RULES, audit
from tests import audit_sandbox
from tests.audit_sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("pgtenancy_database")
sandbox = audit_sandbox.sandbox  # the fixture

UNWRAPPED = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"


def rls_off(box: Sandbox) -> dict:
    box.table(rls=False, force=False, policy=None)
    return {}


def not_forced_owned_by_app(box: Sandbox) -> dict:
    box.table(force=False)
    box.sql("ALTER TABLE {s}.t OWNER TO {app}", as_owner=False)
    return {}


def no_policy(box: Sandbox) -> dict:
    box.table(policy=None)
    return {}


def missing_with_check(box: Sandbox) -> dict:
    box.table(policy="USING ({p})")
    return {}


def with_check_true(box: Sandbox) -> dict:
    box.table(policy="FOR SELECT USING ({p})")
    box.sql("CREATE POLICY tenant_insert ON {s}.t FOR INSERT WITH CHECK (true)")
    return {}


def using_true_beside_correct(box: Sandbox) -> dict:
    box.table()
    box.sql("CREATE POLICY everyone ON {s}.t FOR SELECT USING (true)")
    return {}


def fail_open_is_null(box: Sandbox) -> dict:
    # with current_setting('...') (no missing_ok) first, an unset setting raises before IS NULL is reached
    box.table(
        policy="USING (tenant_id = current_setting('app.current_tenant_id', true)::uuid "
        "OR current_setting('app.current_tenant_id', true) IS NULL)"
    )
    return {}


def fail_open_coalesce(box: Sandbox) -> dict:
    box.table(
        policy="USING (tenant_id = COALESCE(current_setting('app.current_tenant_id', true)::uuid, tenant_id))"
    )
    return {}


def trusts_admin_setting(box: Sandbox) -> dict:
    box.table(policy="USING ({p} OR current_setting('app.is_admin', true) = 'on') WITH CHECK ({p})")
    return {}


def unanalysable_subquery(box: Sandbox) -> dict:
    box.sql("CREATE TABLE {s}.shared (id bigint); GRANT SELECT ON {s}.shared TO {app}")
    box.table(policy="USING ({p} OR id IN (SELECT id FROM {s}.shared)) WITH CHECK ({p})")
    return {}


def missing_nullif(box: Sandbox) -> dict:
    box.table(policy="USING (tenant_id = (SELECT current_setting('app.current_tenant_id', true)::uuid))")
    return {}


def missing_wrapper(box: Sandbox) -> dict:
    box.table(policy=f"USING ({UNWRAPPED}) WITH CHECK ({UNWRAPPED})")
    return {}


def fail_open_function(box: Sandbox) -> dict:
    box.sql(
        "CREATE FUNCTION {s}.tenant_ok(t uuid) RETURNS boolean LANGUAGE sql STABLE AS $$ "
        "SELECT t = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid "
        "OR NULLIF(current_setting('app.current_tenant_id', true), '') IS NULL $$"
    )
    box.table(policy="USING ({s}.tenant_ok(tenant_id)) WITH CHECK ({s}.tenant_ok(tenant_id))")
    return {}


def function_ignoring_setting(box: Sandbox) -> dict:
    box.sql(
        "CREATE FUNCTION {s}.anyone(t uuid) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT t IS NOT NULL $$"
    )
    box.table(policy="USING ({s}.anyone(tenant_id))")
    return {}


def app_superuser(box: Sandbox) -> dict:
    role = box.role("SUPERUSER")
    box.table(grants="")
    return {"role": role}


def app_bypassrls(box: Sandbox) -> dict:
    role = box.role("BYPASSRLS")
    box.table(grants="")
    return {"role": role}


def app_member_of_bypassing(box: Sandbox) -> dict:
    admin = box.role("BYPASSRLS")
    app = box.role("NOINHERIT")
    box.sql("GRANT " + admin + " TO " + app, as_owner=False)
    box.table(grants="")
    return {"role": app}


def app_member_of_owner(box: Sandbox) -> dict:
    app = box.role()
    box.table(grants="")
    box.sql("GRANT {owner} TO " + app, as_owner=False)
    return {"role": app}


def bypassing_role_with_privileges(box: Sandbox) -> dict:
    admin = box.role("BYPASSRLS")
    box.table()
    box.sql("GRANT SELECT ON {s}.t TO " + admin)
    return {}


def not_granted(box: Sandbox) -> dict:
    box.table(grants="")
    return {}


def definer_view(box: Sandbox) -> dict:
    box.table()
    box.sql("CREATE VIEW {s}.v AS SELECT * FROM {s}.t; GRANT SELECT ON {s}.v TO {app}", as_owner=False)
    return {}


def materialized_view(box: Sandbox) -> dict:
    box.table()
    box.sql("CREATE MATERIALIZED VIEW {s}.mv AS SELECT * FROM {s}.t; GRANT SELECT ON {s}.mv TO {app}")
    return {}


def security_definer_function(box: Sandbox) -> dict:
    box.table()
    box.sql(
        "CREATE FUNCTION {s}.all_rows() RETURNS SETOF {s}.t LANGUAGE sql SECURITY DEFINER AS "
        "$$ SELECT * FROM {s}.t $$; GRANT EXECUTE ON FUNCTION {s}.all_rows() TO {app}",
        as_owner=False,
    )
    return {}


def leakproof_function(box: Sandbox) -> dict:
    box.table()
    box.sql(
        "CREATE FUNCTION {s}.eq(a uuid, b uuid) RETURNS boolean LANGUAGE sql IMMUTABLE LEAKPROOF "
        "AS $$ SELECT a = b $$",
        as_owner=False,
    )
    return {}


def unique_without_tenant(box: Sandbox) -> dict:
    box.table()
    box.sql("ALTER TABLE {s}.t ADD CONSTRAINT t_id_key UNIQUE (id)")
    return {}


def foreign_key_without_tenant(box: Sandbox) -> dict:
    box.table("parent", key="PRIMARY KEY (tenant_id, id), UNIQUE (id)")
    box.table("child", seed=False)
    box.sql("ALTER TABLE {s}.child ADD COLUMN parent_id bigint REFERENCES {s}.parent (id)")
    return {}


def truncate_granted(box: Sandbox) -> dict:
    box.table(grants="SELECT, INSERT, UPDATE, DELETE, TRUNCATE")
    return {}


def references_and_trigger_granted(box: Sandbox) -> dict:
    box.table(grants="SELECT, REFERENCES, TRIGGER")
    return {}


def no_tenant_index(box: Sandbox) -> dict:
    box.table(key="PRIMARY KEY (id, tenant_id)")
    return {}


HOLES: list[tuple[Callable[[Sandbox], dict], set[str]]] = [
    (rls_off, {"PGT001"}),
    (not_forced_owned_by_app, {"PGT002", "PGT015"}),
    (no_policy, {"PGT003"}),
    (missing_with_check, {"PGT004"}),
    (with_check_true, {"PGT005"}),
    (using_true_beside_correct, {"PGT006"}),
    (fail_open_is_null, {"PGT007", "PGT008", "PGT009"}),
    (fail_open_coalesce, {"PGT007", "PGT008"}),
    (missing_nullif, {"PGT008"}),
    (missing_wrapper, {"PGT009"}),
    (fail_open_function, {"PGT010", "PGT011"}),
    (function_ignoring_setting, {"PGT006", "PGT010", "PGT011"}),
    (app_superuser, {"PGT012"}),
    (app_bypassrls, {"PGT013"}),
    (app_member_of_bypassing, {"PGT014"}),
    (app_member_of_owner, {"PGT015"}),
    (bypassing_role_with_privileges, {"PGT016"}),
    (definer_view, {"PGT017"}),
    (materialized_view, {"PGT018"}),
    (security_definer_function, {"PGT019"}),
    (leakproof_function, {"PGT020"}),
    (unique_without_tenant, {"PGT021"}),
    (foreign_key_without_tenant, {"PGT022", "PGT021"}),
    (truncate_granted, {"PGT023"}),
    (references_and_trigger_granted, {"PGT024"}),
    (no_tenant_index, {"PGT025"}),
    (trusts_admin_setting, {"PGT028"}),
    (unanalysable_subquery, {"PGT029"}),
    (not_granted, {"PGT047"}),
]


@pytest.mark.parametrize(("build", "expected"), HOLES, ids=[build.__name__ for build, _ in HOLES])
def test_each_hole_fires_its_rule(
    sandbox: Sandbox, build: Callable[[Sandbox], dict], expected: set[str]
) -> None:
    report = sandbox.audit(dynamic=False, **build(sandbox))
    fired = report.rules()
    assert expected <= fired, (
        f"expected {sorted(expected)}, got {[(f.rule, f.message) for f in report.findings]}"
    )
    for finding in report.findings:
        assert finding.severity == RULES[finding.rule].severity
        assert finding.confirmed is None  # static findings are never "confirmed"


CITUS_RULES = {"PGT026", "PGT027"}  # need a Citus cluster: exercised in tests/scaleout/test_citus_audit.py


EXPOSURE_RULES = {i for i, r in RULES.items() if r.check.__module__ == "pgtenancy.audit.exposure"}
SEAL_RULES = {i for i, r in RULES.items() if r.check.__module__ == "pgtenancy.audit.seal_rules"}


def test_every_static_rule_is_exercised() -> None:
    """Each table and policy rule here; the exposure rules in tests/test_audit_exposure.py, the rules of
    sealed setups in tests/test_audit_seal.py."""
    exercised = set().union(*(expected for _, expected in HOLES))
    assert exercised == set(RULES) - CITUS_RULES - EXPOSURE_RULES - SEAL_RULES


def build_clean(box: Sandbox) -> None:
    """Composite keys with the tenant column, FKs including it, a security_invoker view, a reference table."""
    box.sql(
        "CREATE TABLE {s}.country (code text PRIMARY KEY, name text NOT NULL);"
        "GRANT SELECT ON {s}.country TO {app};"
        "INSERT INTO {s}.country VALUES ('fr', 'France'), ('jp', 'Japan')"
    )
    box.table("project", key="PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, body)")
    box.table("task", seed=False)
    box.sql(
        "ALTER TABLE {s}.task ADD COLUMN project_id bigint,"
        " ADD COLUMN country text REFERENCES {s}.country (code),"
        " ADD FOREIGN KEY (tenant_id, project_id) REFERENCES {s}.project (tenant_id, id);"
        "CREATE VIEW {s}.project_names WITH (security_invoker = true)"
        " AS SELECT tenant_id, body FROM {s}.project;"
        "GRANT SELECT ON {s}.project_names TO {app}"
    )
    box.seed("task")
    admin = box.role("BYPASSRLS")  # an admin role that holds no privileges on tenant tables is fine
    assert admin


def test_clean_schema_has_no_error_or_warning(sandbox: Sandbox) -> None:
    build_clean(sandbox)
    report = sandbox.audit(dynamic=False)
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]
    assert report.summary["tenant_tables"] == 2  # project and task; country is a shared reference table


def test_shared_reference_table_is_not_flagged(sandbox: Sandbox) -> None:
    sandbox.sql("CREATE TABLE {s}.currency (code text PRIMARY KEY); GRANT SELECT ON {s}.currency TO {app}")
    report = sandbox.audit(dynamic=False)
    assert report.findings == ()
    assert report.summary["tenant_tables"] == 0


def test_restrictive_tenant_policy_closes_a_permissive_true(sandbox: Sandbox) -> None:
    sandbox.table(policy="AS RESTRICTIVE USING ({p}) WITH CHECK ({p})")
    sandbox.sql("CREATE POLICY everyone ON {s}.t USING (true) WITH CHECK (true)")
    assert not {"PGT005", "PGT006"} & sandbox.audit(dynamic=False).rules()


def test_and_ed_conditions_do_not_open_the_policy(sandbox: Sandbox) -> None:
    sandbox.table(policy="USING ({p} AND body IS NULL) WITH CHECK ({p} AND body IS NOT NULL)")
    assert "PGT007" not in sandbox.audit(dynamic=False).rules()


def test_precedence_of_or_over_and_is_read_from_the_tree(sandbox: Sandbox) -> None:
    sandbox.table(policy="USING ({p} OR body = 'shared' AND {p} IS NULL) WITH CHECK ({p})")
    finding = next(f for f in sandbox.audit(dynamic=False).findings if f.rule == "PGT007")
    assert "with the tenant setting unset (NULL) it admits rows of other tenants" in finding.message


def test_text_of_the_key_compared_with_the_setting_is_safe(sandbox: Sandbox) -> None:
    predicate = "tenant_id::text = current_setting('app.current_tenant_id', true)"
    sandbox.table(policy="USING (" + predicate + ") WITH CHECK (" + predicate + ")")
    assert not {"PGT007", "PGT008"} & sandbox.audit(dynamic=False).rules()


def test_policy_for_another_role_is_ignored(sandbox: Sandbox) -> None:
    other = sandbox.role()
    sandbox.table()
    sandbox.sql("CREATE POLICY support ON {s}.t FOR SELECT TO " + other + " USING (true)")
    assert "PGT006" not in sandbox.audit(dynamic=False).rules()


def test_the_shared_test_schema_is_clean(pgtenancy_database) -> None:
    report = audit(pgtenancy_database.url("admin"), role=pgtenancy_database.roles.app, dynamic=False)
    assert report.failing == ()
    assert report.summary["tenant_tables"] == 2


def test_fix_sql_quotes_identifiers(sandbox: Sandbox) -> None:
    sandbox.sql('CREATE TABLE {s}."Odd Name" (tenant_id uuid NOT NULL)')
    finding = next(f for f in sandbox.audit(dynamic=False).findings if f.rule == "PGT001")
    assert f'{sandbox.schema}."Odd Name" ENABLE ROW LEVEL SECURITY' in (finding.fix or "")


def test_every_rule_is_documented_with_its_why_and_fix() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "audit.md").read_text()
    for rule in [*RULES.values(), *PROBE_RULES.values()]:
        section = docs.split("### " + rule.id + "\n", 1)[1].split("\n### ", 1)[0]
        assert rule.title in section and rule.why in section and rule.fix in section


def test_partitions_reached_only_through_their_parent_are_not_flagged(sandbox: Sandbox) -> None:
    sandbox.sql(
        "CREATE TABLE {s}.events (tenant_id uuid NOT NULL, id bigint NOT NULL, body text NOT NULL,"
        " PRIMARY KEY (tenant_id, id)) PARTITION BY HASH (tenant_id);"
        "CREATE TABLE {s}.events_0 PARTITION OF {s}.events FOR VALUES WITH (MODULUS 2, REMAINDER 0);"
        "CREATE TABLE {s}.events_1 PARTITION OF {s}.events FOR VALUES WITH (MODULUS 2, REMAINDER 1);"
        "ALTER TABLE {s}.events ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.events FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY tenant_isolation ON {s}.events USING ({p}) WITH CHECK ({p});"
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.events TO {app}"
    )
    sandbox.sql(
        "INSERT INTO {s}.events SELECT gen_random_uuid(), g, 'e' FROM generate_series(1, 40) g",
        as_owner=False,
    )
    report = sandbox.audit()
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]
    sandbox.sql("GRANT SELECT ON {s}.events_1 TO {app}")  # now reachable directly, without RLS
    report = sandbox.audit()
    assert ("PGT001", "table " + sandbox.schema + ".events_1") in {
        (f.rule, f.object) for f in report.findings
    }
    assert {"PGT101", "PGT106"} <= {f.rule for f in report.findings if f.confirmed}


NESTED_BODIES = [
    ("SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid", set()),
    (
        "SELECT COALESCE(NULLIF(current_setting('app.current_tenant_id', true), '')::uuid, "
        "'00000000-0000-0000-0000-0000000000b2'::uuid)",
        {"PGT010"},
    ),
]


@pytest.mark.parametrize(("inner", "expected"), NESTED_BODIES, ids=["bound", "fail-open"])
def test_a_policy_function_calling_another_is_read_through(
    sandbox: Sandbox, inner: str, expected: set[str]
) -> None:
    """current_tenant() calls raw_tenant(): the body that decides is two calls away from the policy."""
    sandbox.sql(
        "CREATE FUNCTION {s}.raw_tenant() RETURNS uuid LANGUAGE sql STABLE AS $$ " + inner + " $$;"
        "CREATE FUNCTION {s}.current_tenant() RETURNS uuid LANGUAGE sql STABLE"
        " AS $$ SELECT {s}.raw_tenant() $$"
    )
    sandbox.table(
        policy="USING (tenant_id = {s}.current_tenant()) WITH CHECK (tenant_id = {s}.current_tenant())"
    )
    failing = {f.rule for f in sandbox.audit(dynamic=False).failing}
    assert failing == expected


def test_a_tenant_column_of_another_name_compared_as_text_is_found(sandbox: Sandbox) -> None:
    sandbox.sql(
        "CREATE TABLE {s}.t (org_id uuid NOT NULL, body text NOT NULL);"
        "ALTER TABLE {s}.t ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY p ON {s}.t USING (org_id::text = current_setting('app.current_tenant_id', true));"
        "GRANT SELECT ON {s}.t TO {app}"
    )
    report = sandbox.audit(dynamic=False)
    assert report.summary["tenant_tables"] == 1
    missing_index = next(f for f in report.findings if f.rule == "PGT025")
    assert "'org_id'" in missing_index.message  # judged as a tenant table by the column the policy reads


def test_a_tenant_table_without_grants_is_listed_as_closed(sandbox: Sandbox) -> None:
    sandbox.table(grants="")
    findings = [f for f in sandbox.audit(dynamic=False).findings if f.rule == "PGT047"]
    assert [f.object for f in findings] == ["table " + sandbox.schema + ".t"]
    assert findings[0].severity == "info"
    sandbox.sql(findings[0].fix or "")
    assert "PGT047" not in sandbox.audit(dynamic=False).rules()
