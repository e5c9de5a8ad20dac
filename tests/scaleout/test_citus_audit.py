"""``pgtenancy check`` on a Citus cluster: tenant tables not distributed, foreign keys not co-located."""

from __future__ import annotations

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, text

import pgtenancy.alembic  # noqa: F401 - registers the operations on ``op``
from pgtenancy.audit import audit

SCHEMA = "audit_citus"
P = "tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"


def tenant_table(
    conn: Connection, app: str, name: str, *, parent: str | None = None, distribute: dict | None = None
) -> None:
    """A tenant table keyed by (tenant_id, id), made with pgtenancy's operations: distributed with
    ``distribute`` as options (left plain when None), then isolated and granted to the app role."""
    reference = ""
    if parent:
        reference = f", parent_id bigint, FOREIGN KEY (tenant_id, parent_id) REFERENCES {parent}"
    conn.exec_driver_sql(
        f"CREATE TABLE {name} (tenant_id uuid NOT NULL, id bigint NOT NULL, body text{reference}, "
        "PRIMARY KEY (tenant_id, id))"
    )
    op = Operations(MigrationContext.configure(conn))
    if distribute is not None:
        op.distribute_tenant_table(name, schema=SCHEMA, **distribute)
    op.enable_tenant_isolation(name, schema=SCHEMA)  # on a distributed table: the unwrapped form, by itself
    op.grant_tenant_access(app, name, schema=SCHEMA)


def findings(citus_app, *, dynamic: bool = False) -> dict[str, list[tuple[str, str]]]:
    """The audit's findings of the test schema by rule: (object, message) each."""
    report = audit(citus_app.url("admin"), role=citus_app.roles.app, schemas=[SCHEMA], dynamic=dynamic)
    assert report.summary["citus"] is True
    found: dict[str, list[tuple[str, str]]] = {}
    for finding in report.findings:
        found.setdefault(finding.rule, []).append((finding.object, finding.message))
    return found


def test_a_distributed_schema_made_by_the_operations_is_clean(citus_app, owner):
    app = citus_app.roles.app
    tenant_table(owner, app, "accounts", distribute={})
    tenant_table(owner, app, "invoices", parent="accounts", distribute={"colocate_with": "accounts"})
    report = audit(citus_app.url("admin"), role=app, schemas=[SCHEMA], dynamic=True)
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]
    assert "PGT009" not in report.rules()  # the unwrapped policy is the right form on Citus
    assert report.summary["tenant_tables"] == 2


def test_the_probes_write_as_the_app_role_on_a_single_shard(citus_app, owner):
    """Citus refuses a role the placements another role modified in the same transaction: with one
    shard every probe row shares a placement, so rows the auditor wrote would break the app role's probes."""
    owner.exec_driver_sql("SET citus.shard_count = 1")
    tenant_table(owner, citus_app.roles.app, "single", distribute={"colocate_with": "none"})
    report = audit(citus_app.url("admin"), role=citus_app.roles.app, schemas=[SCHEMA], dynamic=True)
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]
    assert report.summary["tenant_tables"] == 1
    owner.exec_driver_sql(
        "CREATE POLICY any_tenant ON single USING (current_setting('app.current_tenant_id', true) <> '')"
    )
    report = audit(citus_app.url("admin"), role=citus_app.roles.app, schemas=[SCHEMA], dynamic=True)
    assert [f.confirmed for f in report.findings if f.rule == "PGT101"] == [True]  # on rows the probes wrote


def test_an_isolated_table_left_on_the_coordinator_is_reported(citus_app, owner):
    tenant_table(owner, citus_app.roles.app, "ledger")
    owner.exec_driver_sql("CREATE TABLE countries (code text PRIMARY KEY)")  # shared data: not reported
    found = findings(citus_app)
    assert found["PGT026"] == [
        (
            f"table {SCHEMA}.ledger",
            "is a plain table on the coordinator, not distributed by its tenant column 'tenant_id'",
        )
    ]
    report = audit(citus_app.url("admin"), role=citus_app.roles.app, schemas=[SCHEMA], dynamic=False)
    fix = next(f.fix for f in report.findings if f.rule == "PGT026")
    owner.exec_driver_sql(fix)  # the fix runs as given
    assert "PGT026" not in findings(citus_app)


def test_a_table_distributed_by_another_column_is_reported(citus_app, owner):
    owner.exec_driver_sql("CREATE TABLE events (tenant_id uuid NOT NULL, id bigint NOT NULL)")
    Operations(MigrationContext.configure(owner)).distribute_tenant_table("events", "id", schema=SCHEMA)
    Operations(MigrationContext.configure(owner)).enable_tenant_isolation("events", schema=SCHEMA)
    assert found_objects(findings(citus_app), "PGT026") == {f"table {SCHEMA}.events"}
    message = findings(citus_app)["PGT026"][0][1]
    assert message.startswith("is distributed by 'id'")


def found_objects(found: dict[str, list[tuple[str, str]]], rule: str) -> set[str]:
    return {obj for obj, _ in found.get(rule, [])}


def test_foreign_keys_outside_the_co_location_group_are_reported(citus_app, owner):
    app = citus_app.roles.app
    tenant_table(owner, app, "projects", distribute={})
    tenant_table(owner, app, "tasks", parent="projects", distribute={"colocate_with": "projects"})
    tenant_table(owner, app, "notes_local", parent="projects")  # Citus lets a plain table reference it
    assert found_objects(findings(citus_app), "PGT027") == {f"table {SCHEMA}.notes_local"}
    owner.execute(
        text("SELECT update_distributed_table_colocation(CAST(:t AS regclass), colocate_with => 'none')"),
        {"t": SCHEMA + ".tasks"},
    )
    found = findings(citus_app)
    assert found_objects(found, "PGT027") == {f"table {SCHEMA}.notes_local", f"table {SCHEMA}.tasks"}
    assert ("in another co-location group") in dict(found["PGT027"])[f"table {SCHEMA}.tasks"]
    report = audit(citus_app.url("admin"), role=app, schemas=[SCHEMA], dynamic=False)
    fix = next(f.fix for f in report.findings if f.rule == "PGT027" and f.object.endswith(".tasks"))
    owner.exec_driver_sql(fix)  # back in the parent's group
    assert found_objects(findings(citus_app), "PGT027") == {f"table {SCHEMA}.notes_local"}


def test_rules_about_citus_stay_silent_without_it(pgtenancy_database):
    report = audit(pgtenancy_database.url("admin"), role=pgtenancy_database.roles.app, dynamic=False)
    assert report.summary["citus"] is False
    assert not {"PGT026", "PGT027"} & report.rules()


def test_the_probes_bind_tenants_the_way_citus_forwards_them(citus_app, owner):
    """A policy that opens up once any tenant is bound: only a tenant that reaches the shards shows it."""
    tenant_table(owner, citus_app.roles.app, "leaky", distribute={})
    owner.exec_driver_sql(
        "CREATE POLICY any_tenant ON leaky USING (current_setting('app.current_tenant_id', true) <> '')"
    )
    admin = citus_app.admin()
    with admin.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {SCHEMA}.leaky SELECT gen_random_uuid(), g, 'x' FROM generate_series(1, 4) g"
        )
    report = audit(citus_app.url("admin"), role=citus_app.roles.app, schemas=[SCHEMA])
    (read,) = [f for f in report.findings if f.rule == "PGT101"]
    assert read.confirmed and "SET LOCAL app.current_tenant_id = '" in (read.reproduction or "")
