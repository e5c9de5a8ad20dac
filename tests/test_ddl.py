"""DDL constructs: exact SQL, quoting, validation, and idempotence against a real PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pgtenancy import ddl
from pgtenancy.catalog import (
    indexes_leading_with,
    owned_sequences,
    role_info,
    sequence_privileges,
    table_policies,
    table_privileges,
    table_security,
)
from pgtenancy.errors import ConfigurationError
from pgtenancy.testing import TestDatabase

DIALECT = postgresql.dialect(paramstyle="named")
ROLE, BYPASS_ROLE = (
    "pgt_ddl_" + kind + "_" + secrets.token_hex(3) for kind in ("role", "bypass")
)  # server-wide
UUID_POLICY = (
    "(tenant_id = ( SELECT (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::"
    'uuid AS "nullif"))'
)


def sql(element) -> str:
    return str(element.compile(dialect=DIALECT))


def run(conn: Connection, statements) -> None:
    for statement in statements:
        conn.execute(statement)


@pytest.fixture
def owner(pgtenancy_owner_engine: Engine) -> Iterator[Connection]:
    """An owner connection whose work is rolled back after the test."""
    with pgtenancy_owner_engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text)"
        )
        yield conn
        conn.rollback()


def test_policy_compares_the_column_with_the_setting_once_per_query():
    assert sql(ddl.CreateTenantPolicy("items")) == (
        "CREATE POLICY pgtenancy_tenant_isolation ON items AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)) "
        "WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))"
    )


def test_citus_policy_leaves_out_the_subquery():
    rendered = sql(ddl.CreateTenantPolicy("items", "org", key_type="int", setting="my.org", citus=True))
    assert "USING (org = NULLIF(current_setting('my.org', true), '')::bigint)" in rendered
    assert "SELECT" not in rendered


def test_names_are_quoted_by_the_dialect():
    rendered = sql(ddl.RowLevelSecurity('we"ird %name', schema="Sales"))
    assert rendered == 'ALTER TABLE "Sales"."we""ird %name" ENABLE ROW LEVEL SECURITY'
    grant = sql(ddl.GrantTableAccess("App Role", "select"))
    assert grant == 'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "select" TO "App Role"'


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ddl.CreateTenantPolicy("t", setting="app.x'; DROP TABLE t; --"), "invalid setting name"),
        (lambda: ddl.CreateTenantPolicy("t", key_type="float"), "unsupported key_type"),
        (lambda: ddl.RowLevelSecurity(""), "invalid table name"),
        (lambda: ddl.RowLevelSecurity("x" * 64), "longer than 63 bytes"),
        (lambda: ddl.GrantTableAccess("public", "t"), "reserved"),
        (lambda: ddl.DropTenantRole("pg_read_all_data"), "reserved"),
        (lambda: ddl.EnsureTenantRole("r", password=""), "non-empty"),
    ],
)
def test_bad_input_is_refused_before_any_sql(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_a_name_cannot_end_a_do_block_early():
    with pytest.raises(ConfigurationError, match="must not contain"):
        ddl.EnsureTenantRole("r", password="x$pgtenancy$; DROP TABLE t; --")
    with pytest.raises(ConfigurationError, match="must not contain"):
        ddl.EnsureTenantIndex("t$pgtenancy$; DROP TABLE t; --")


def test_index_names_stay_within_63_bytes_and_distinct():
    first, second = (
        ddl.tenant_index_name("a" * 60 + "1", "tenant_id"),
        ddl.tenant_index_name("a" * 60 + "2", "tenant_id"),
    )
    assert first != second
    assert len(first.encode()) <= 63 and first.startswith(ddl.MANAGED_PREFIX)


def test_enable_twice_gives_forced_rls_one_policy_and_an_index(owner: Connection):
    for _ in range(2):
        run(owner, ddl.enable_statements("items"))
    security = table_security(owner, "items")
    assert security is not None and security.rls_enabled and security.rls_forced
    (policy,) = table_policies(owner, "items")
    assert (policy.name, policy.using, policy.with_check) == (ddl.POLICY_NAME, UUID_POLICY, UUID_POLICY)
    assert indexes_leading_with(owner, "items", "tenant_id") == [ddl.tenant_index_name("items", "tenant_id")]


def test_no_index_is_added_when_one_already_leads_with_the_tenant_column(owner: Connection):
    owner.exec_driver_sql("CREATE INDEX items_by_tenant ON items (tenant_id, id)")
    run(owner, ddl.enable_statements("items"))
    assert indexes_leading_with(owner, "items", "tenant_id") == ["items_by_tenant"]
    run(owner, ddl.disable_statements("items"))
    assert indexes_leading_with(owner, "items", "tenant_id") == ["items_by_tenant"]  # the user's index stays


def test_disable_twice_is_the_exact_reverse(owner: Connection):
    run(owner, ddl.enable_statements("items"))
    for _ in range(2):
        run(owner, ddl.disable_statements("items"))
    security = table_security(owner, "items")
    assert security is not None and not security.rls_enabled and not security.rls_forced
    assert table_policies(owner, "items") == []
    assert indexes_leading_with(owner, "items", "tenant_id") == []


def test_enable_replaces_a_policy_that_drifted(owner: Connection):
    run(owner, ddl.enable_statements("items"))
    run(owner, [ddl.DropTenantPolicy("items"), ddl.CreateTenantPolicy("items", citus=True)])
    run(owner, ddl.enable_statements("items"))
    assert table_policies(owner, "items")[0].using == UUID_POLICY


def test_odd_names_survive_the_psycopg_percent_escaping(owner: Connection):
    # raw driver SQL goes through psycopg's placeholder parser, hence the doubled percent signs
    owner.exec_driver_sql('CREATE SCHEMA "Odd %%s"')
    owner.exec_driver_sql('CREATE TABLE "Odd %%s"."50%% off" ("tenant %%(id)s" bigint NOT NULL)')
    run(owner, ddl.enable_statements("50% off", "tenant %(id)s", "Odd %s", key_type="int"))
    security = table_security(owner, "50% off", "Odd %s")
    assert security is not None and security.rls_forced
    assert table_policies(owner, "50% off", "Odd %s")[0].using.startswith('("tenant %(id)s" = ')


def test_grant_twice_gives_dml_and_sequence_usage_only(owner: Connection, pgtenancy_database: TestDatabase):
    app = pgtenancy_database.roles.app
    owner.exec_driver_sql("GRANT SELECT, TRUNCATE, REFERENCES, TRIGGER ON items TO " + app)
    for _ in range(2):
        run(owner, ddl.grant_statements(app, "items"))
    assert table_privileges(owner, app, "items") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    (sequence,) = owned_sequences(owner, "items")
    assert sequence_privileges(owner, app, sequence) == {"USAGE"}
    for _ in range(2):
        run(owner, ddl.revoke_statements(app, "items"))
    assert table_privileges(owner, app, "items") == frozenset()
    assert sequence_privileges(owner, app, sequence) == frozenset()


@pytest.fixture
def admin(pgtenancy_database: TestDatabase) -> Iterator[Connection]:
    engine = create_engine(pgtenancy_database.url("admin"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
        conn.exec_driver_sql("DROP ROLE IF EXISTS " + ROLE)
        conn.exec_driver_sql("DROP ROLE IF EXISTS " + BYPASS_ROLE)
    engine.dispose()


def test_role_is_created_once_with_safe_attributes_and_dropped(admin: Connection):
    for _ in range(2):
        run(admin, ddl.create_role_statements(ROLE, password="s3cret"))
    role = role_info(admin, ROLE)
    assert role is not None and role.login
    assert not (role.superuser or role.bypassrls or role.createdb or role.createrole or role.replication)
    assert admin.execute(
        text("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = :r"), {"r": ROLE}
    ).scalar_one()
    for _ in range(2):
        run(admin, ddl.drop_role_statements(ROLE))
    assert role_info(admin, ROLE) is None


def test_an_existing_role_that_bypasses_rls_is_an_error(admin: Connection):
    admin.exec_driver_sql("CREATE ROLE " + BYPASS_ROLE + " BYPASSRLS")
    with pytest.raises(DBAPIError, match="superuser or has BYPASSRLS"):
        run(admin, ddl.create_role_statements(BYPASS_ROLE))
