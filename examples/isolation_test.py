import uuid

import pytest

from pgtenancy.sqlgen import render_enable_sql, render_grant_sql
from pgtenancy.testing import assert_no_findings, assert_tenant_isolated


@pytest.fixture(scope="session")
def pgtenancy_schema():
    def build(conn, roles):  # runs once, as the owner role, into the template database
        conn.exec_driver_sql(
            "CREATE TABLE invoices (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
            "body text NOT NULL, PRIMARY KEY (tenant_id, id))"
        )
        conn.exec_driver_sql(render_enable_sql("invoices"))
        conn.exec_driver_sql(render_grant_sql(roles.app, "invoices"))

    return build


def test_invoices_do_not_leak(pgtenancy_database):
    assert_tenant_isolated(pgtenancy_database.url("app"), "invoices", tenants=[uuid.uuid4(), uuid.uuid4()])


def test_the_schema_passes_the_audit(pgtenancy_database):
    assert_no_findings(pgtenancy_database.url("admin"), role=pgtenancy_database.roles.app)
