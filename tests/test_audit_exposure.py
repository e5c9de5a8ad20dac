"""Holes around the tables: each is exploited for real as the app role, named by its rule, and closed by
the finding's own fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pgtenancy.audit import RULES
from pgtenancy.audit.findings import Finding
from pgtenancy.catalog.snapshot import read_snapshot
from tests import audit_sandbox
from tests.audit_sandbox import TENANT_A, TENANT_B, Sandbox

pytestmark = pytest.mark.usefixtures("pgtenancy_database")
sandbox = audit_sandbox.sandbox  # the fixture

EXPOSURE_RULES = {i for i, r in RULES.items() if r.check.__module__ == "pgtenancy.audit.exposure"}
BIND = text("SELECT set_config('app.current_tenant_id', :t, false)")


# ----------------------------------------------------------------------------- helpers


def login_role(box: Sandbox, attributes: str = "") -> str:
    """A fresh NOSUPERUSER NOBYPASSRLS login role, dropped after the test: the case's own app role."""
    return box.role(
        "LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '" + box.database.roles.password + "' " + attributes
    )


@contextmanager
def connected(box: Sandbox, role: str | None = None, tenant: uuid.UUID | None = None) -> Iterator[Connection]:
    """A fresh login as ``role`` (default: the database's app role), ``tenant`` bound for the session."""
    if role is None:
        url = box.database.url("app")
    else:
        url = box.database.server.url(
            database=box.database.name, username=role, password=box.database.roles.password
        )
    engine: Engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
                ).scalar_one()
                is False
            )
            if tenant is not None:
                conn.execute(BIND, {"t": str(tenant)})
            yield conn
    finally:
        engine.dispose()


def findings(box: Sandbox, rule_id: str, role: str | None = None) -> list[Finding]:
    """The static findings of ``rule_id`` for the sandbox, audited for ``role`` (default: the app role)."""
    report = box.audit(dynamic=False, **({"role": role} if role else {}))
    found = [f for f in report.findings if f.rule == rule_id]
    for finding in found:
        assert finding.severity == RULES[rule_id].severity
    return found


def fix(box: Sandbox, finding: Finding) -> None:
    """Apply a finding's fix SQL as the superuser."""
    assert finding.fix
    with box.admin.begin() as conn:
        conn.exec_driver_sql(finding.fix)


def tenants_seen(conn: Connection, relation: str) -> set[uuid.UUID]:
    return set(conn.execute(text("SELECT DISTINCT tenant_id FROM " + relation)).scalars())


def available(box: Sandbox, extension: str) -> None:
    """Skip the test, naming what is missing, when the server cannot install ``extension``."""
    with box.admin.connect() as conn:
        found = conn.execute(
            text("SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = :n)"), {"n": extension}
        ).scalar_one()
    if not found:
        pytest.skip(f"the test server has no {extension} extension (pg_available_extensions)")


# ----------------------------------------------------------------------------- foreign tables


def test_foreign_table_with_tenant_rows(sandbox: Sandbox) -> None:
    available(sandbox, "file_fdw")
    sandbox.table()
    server = sandbox.schema + "_files"
    with sandbox.admin.connect() as conn:  # the server writes the export and file_fdw reads it back
        export = conn.exec_driver_sql("SHOW data_directory").scalar_one() + "/" + sandbox.schema + ".csv"
    sandbox.sql(
        "CREATE EXTENSION IF NOT EXISTS file_fdw; CREATE SERVER {server} FOREIGN DATA WRAPPER file_fdw;"
        "COPY (SELECT tenant_id, body FROM {s}.t) TO '{export}' (FORMAT csv);"
        "CREATE FOREIGN TABLE {s}.export (tenant_id uuid, body text) SERVER {server}"
        " OPTIONS (filename '{export}', format 'csv');"
        "CREATE FOREIGN TABLE {s}.countries (code text) SERVER {server} OPTIONS (filename '{export}');"
        "GRANT SELECT ON {s}.export, {s}.countries TO {app}",
        as_owner=False,
        server=server,
        export=export,
    )
    try:
        with connected(sandbox, tenant=TENANT_A) as conn:
            assert tenants_seen(conn, sandbox.schema + ".export") == {TENANT_A, TENANT_B}
        (found,) = findings(sandbox, "PGT030")
        assert found.object == "foreign table " + sandbox.schema + ".export"
        assert "'tenant_id'" in found.message and "SELECT" in found.message
        (shared,) = findings(sandbox, "PGT031")  # no tenant column: inventory, never failing
        assert shared.object == "foreign table " + sandbox.schema + ".countries" and not shared.failing
        fix(sandbox, found)
        with (
            connected(sandbox, tenant=TENANT_A) as conn,
            pytest.raises(DBAPIError, match="permission denied"),
        ):
            conn.execute(text("SELECT * FROM " + sandbox.schema + ".export"))
        assert findings(sandbox, "PGT030") == []
        fix(sandbox, shared)
        assert findings(sandbox, "PGT031") == []
    finally:
        sandbox.sql("DROP SERVER {server} CASCADE", as_owner=False, server=server)


# ----------------------------------------------------------------------------- sequences


def test_sequence_of_a_tenant_table_shows_other_tenants_inserts(sandbox: Sandbox) -> None:
    sandbox.sql(
        "CREATE TABLE {s}.orders (id bigserial, tenant_id uuid NOT NULL, body text NOT NULL,"
        " PRIMARY KEY (tenant_id, id));"
        "ALTER TABLE {s}.orders ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.orders FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY tenant_isolation ON {s}.orders USING ({p}) WITH CHECK ({p});"
        "GRANT SELECT, INSERT ON {s}.orders TO {app};"
        "GRANT SELECT, USAGE ON SEQUENCE {s}.orders_id_seq TO {app};"
        "CREATE SEQUENCE {s}.ticket_numbers; GRANT SELECT ON SEQUENCE {s}.ticket_numbers TO {app}"
    )
    orders, sequence = sandbox.schema + ".orders", sandbox.schema + ".orders_id_seq"
    insert = text("INSERT INTO " + orders + " (tenant_id, body) VALUES (:t, 'x')")
    with connected(sandbox, tenant=TENANT_A) as a, connected(sandbox, tenant=TENANT_B) as b:
        a.execute(insert, {"t": TENANT_A})
        before = a.execute(text("SELECT last_value FROM " + sequence)).scalar_one()
        for _ in range(3):
            b.execute(insert, {"t": TENANT_B})
        assert a.execute(text("SELECT last_value FROM " + sequence)).scalar_one() == before + 3
    (found,) = findings(sandbox, "PGT032")
    assert found.object == "sequence " + sequence and "SELECT" in found.message
    (shared,) = findings(sandbox, "PGT033")
    assert shared.object == "sequence " + sandbox.schema + ".ticket_numbers" and not shared.failing
    fix(sandbox, found)
    with connected(sandbox, tenant=TENANT_A) as a:
        a.execute(insert, {"t": TENANT_A})  # USAGE is all the column default needs
        with pytest.raises(DBAPIError, match="permission denied"):
            a.execute(text("SELECT last_value FROM " + sequence))
    assert findings(sandbox, "PGT032") == []
    fix(sandbox, shared)
    assert findings(sandbox, "PGT033") == []


# ----------------------------------------------------------------------------- large objects


def test_large_objects_granted_to_public_or_unchecked(sandbox: Sandbox) -> None:
    database = sandbox.database.name
    with sandbox.admin.begin() as conn:
        granted = conn.execute(text("SELECT lo_from_bytea(0, 'tenant B invoice')")).scalar_one()
        private = conn.execute(text("SELECT lo_from_bytea(0, 'tenant B contract')")).scalar_one()
        conn.exec_driver_sql(f"GRANT SELECT ON LARGE OBJECT {granted} TO PUBLIC")
    try:
        with connected(sandbox, tenant=TENANT_A) as conn:
            assert conn.execute(text("SELECT lo_get(:o)"), {"o": granted}).scalar_one() == b"tenant B invoice"
        (found,) = findings(sandbox, "PGT034")
        assert found.object == "large objects granted to PUBLIC" and "read 1 large object" in found.message
        fix(sandbox, found)
        with (
            connected(sandbox, tenant=TENANT_A) as conn,
            pytest.raises(DBAPIError, match="permission denied"),
        ):
            conn.execute(text("SELECT lo_get(:o)"), {"o": granted})
        assert findings(sandbox, "PGT034") == []

        sandbox.sql('ALTER DATABASE "' + database + '" SET lo_compat_privileges = on', as_owner=False)
        with connected(sandbox, tenant=TENANT_A) as conn:  # a new session gets the database default
            assert (
                conn.execute(text("SELECT lo_get(:o)"), {"o": private}).scalar_one() == b"tenant B contract"
            )
        (compat,) = findings(sandbox, "PGT034")
        assert compat.object == "database " + database and repr(database) in compat.message
        fix(sandbox, compat)
        with (
            connected(sandbox, tenant=TENANT_A) as conn,
            pytest.raises(DBAPIError, match="permission denied"),
        ):
            conn.execute(text("SELECT lo_get(:o)"), {"o": private})
        assert findings(sandbox, "PGT034") == []
    finally:
        sandbox.sql('ALTER DATABASE "' + database + '" RESET lo_compat_privileges', as_owner=False)
        with sandbox.admin.begin() as conn:
            conn.execute(
                text("SELECT lo_unlink(o) FROM unnest(CAST(:o AS oid[])) o"), {"o": [granted, private]}
            )


def test_large_objects_the_app_role_owns(sandbox: Sandbox) -> None:
    with connected(sandbox, tenant=TENANT_B) as conn:  # tenant B's upload, stored by the app
        stored = conn.execute(text("SELECT lo_from_bytea(0, 'tenant B scan')")).scalar_one()
    try:
        with connected(sandbox, tenant=TENANT_A) as conn:
            assert conn.execute(text("SELECT lo_get(:o)"), {"o": stored}).scalar_one() == b"tenant B scan"
        (found,) = findings(sandbox, "PGT034")
        assert found.object == "large objects owned by " + sandbox.app and "it owns them" in found.message
        assert found.fix and "<a role the app is not a member of>" in found.fix
        found = replace(
            found, fix=found.fix.replace("<a role the app is not a member of>", sandbox.database.roles.owner)
        )
        fix(sandbox, found)
        with (
            connected(sandbox, tenant=TENANT_A) as conn,
            pytest.raises(DBAPIError, match="permission denied"),
        ):
            conn.execute(text("SELECT lo_get(:o)"), {"o": stored})
        assert findings(sandbox, "PGT034") == []
    finally:
        with sandbox.admin.begin() as conn:
            conn.execute(text("SELECT lo_unlink(:o)"), {"o": stored})


# ----------------------------------------------------------------------------- roles


def test_predefined_role_through_a_chain_reads_every_tenant(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    middle = sandbox.role()
    sandbox.table(grants="")
    sandbox.sql(
        "CREATE MATERIALIZED VIEW {s}.totals AS SELECT tenant_id, body FROM {s}.t", as_owner=False
    )  # refreshed by a role above row-level security, granted to nobody
    sandbox.sql("GRANT pg_read_all_data TO " + middle + "; GRANT " + middle + " TO " + app, as_owner=False)
    with connected(sandbox, app, tenant=TENANT_A) as conn:
        assert tenants_seen(conn, sandbox.schema + ".totals") == {TENANT_A, TENANT_B}
    (found,) = findings(sandbox, "PGT035", role=app)
    assert "'pg_read_all_data' (through " + middle + ")" in found.message
    fix(sandbox, found)
    with (
        connected(sandbox, app, tenant=TENANT_A) as conn,
        pytest.raises(DBAPIError, match="permission denied"),
    ):
        conn.execute(text("SELECT * FROM " + sandbox.schema + ".totals"))
    assert findings(sandbox, "PGT035", role=app) == []


def test_pg_signal_backend_ends_another_tenants_session(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    sandbox.sql("GRANT pg_signal_backend TO " + app, as_owner=False)
    terminate = text("SELECT pg_terminate_backend(:pid)")
    with connected(sandbox, tenant=TENANT_B) as other:
        pid = other.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with connected(sandbox, app, tenant=TENANT_A) as conn:
            assert conn.execute(terminate, {"pid": pid}).scalar_one() is True
    (found,) = findings(sandbox, "PGT036", role=app)
    assert "'pg_signal_backend' (directly)" in found.message
    fix(sandbox, found)
    with connected(sandbox, tenant=TENANT_B) as other:
        pid = other.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with connected(sandbox, app, tenant=TENANT_A) as conn, pytest.raises(DBAPIError, match="permission"):
            conn.execute(terminate, {"pid": pid})
    assert findings(sandbox, "PGT036", role=app) == []


def test_createrole_on_this_server_and_before_postgresql_16(sandbox: Sandbox) -> None:
    app = login_role(sandbox, "CREATEROLE")
    made = "pgt_x_made_" + uuid.uuid4().hex[:8]
    with connected(sandbox, app) as conn:
        version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        if version < 160000:
            pytest.skip("PostgreSQL 16+ rules for CREATEROLE are what this case shows")
        conn.exec_driver_sql("CREATE ROLE " + made + " LOGIN")  # it makes login roles at will
        sandbox.extra_roles.append(made)
        with pytest.raises(DBAPIError, match="ADMIN"):  # but since 16 it cannot take the owner's role
            conn.exec_driver_sql("GRANT " + sandbox.database.roles.owner + " TO " + app)
    (found,) = findings(sandbox, "PGT038", role=app)
    assert f"PostgreSQL {version // 10000}" in found.message
    assert findings(sandbox, "PGT037", role=app) == []
    with sandbox.admin.connect() as conn:  # the same catalog read as if the server were PostgreSQL 15
        snapshot = read_snapshot(conn, role=app, schemas=[sandbox.schema])
    older = replace(snapshot, database=replace(snapshot.database, server_version=150007))
    (old,) = RULES["PGT037"].check(older)
    assert "PostgreSQL 15" in old.message and old.severity == "error"
    assert list(RULES["PGT038"].check(older)) == []
    fix(sandbox, found)
    with connected(sandbox, app) as conn, pytest.raises(DBAPIError, match="permission denied"):
        conn.exec_driver_sql("CREATE ROLE pgt_x_refused LOGIN")
    assert findings(sandbox, "PGT038", role=app) == []


def test_schema_owner_replaces_a_tenant_table(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    schema_owner = sandbox.role()
    sandbox.table(grants="")
    sandbox.sql(
        "ALTER SCHEMA {s} OWNER TO " + schema_owner + "; GRANT USAGE, CREATE ON SCHEMA {s} TO {owner};"
        "GRANT " + schema_owner + " TO " + app,
        as_owner=False,
    )
    with connected(sandbox, app, tenant=TENANT_A) as conn:  # a tenant drops the table for everyone...
        conn.exec_driver_sql(
            f"DROP TABLE {sandbox.schema}.t; CREATE TABLE {sandbox.schema}.t (tenant_id uuid, body text);"
            f"GRANT SELECT, INSERT ON {sandbox.schema}.t TO {sandbox.app}"
        )
    with connected(sandbox, tenant=TENANT_B) as conn:  # ...and tenant B's next write lands unprotected
        conn.execute(text(f"INSERT INTO {sandbox.schema}.t VALUES (:t, 'b')"), {"t": TENANT_B})
    with connected(sandbox, app, tenant=TENANT_A) as conn:
        assert tenants_seen(conn, sandbox.schema + ".t") == {TENANT_B}
    sandbox.sql("DROP TABLE {s}.t", as_owner=False)
    sandbox.table(grants="")
    (found,) = findings(sandbox, "PGT039", role=app)
    assert found.object == "schema " + sandbox.schema and app + " -> " + schema_owner in found.message
    fix(sandbox, found)
    with connected(sandbox, app, tenant=TENANT_A) as conn, pytest.raises(DBAPIError, match="must be owner"):
        conn.exec_driver_sql(f"DROP TABLE {sandbox.schema}.t")
    assert findings(sandbox, "PGT039", role=app) == []


def test_schema_the_app_role_owns_directly(sandbox: Sandbox) -> None:
    sandbox.table()
    sandbox.sql("ALTER SCHEMA {s} OWNER TO {app}", as_owner=False)
    (found,) = findings(sandbox, "PGT039")
    assert found.fix == f"ALTER SCHEMA {sandbox.schema} OWNER TO {sandbox.database.roles.owner};"
    fix(sandbox, found)
    assert findings(sandbox, "PGT039") == []


def test_owner_of_a_policy_function_opens_the_table(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    function_owner = sandbox.role()
    sandbox.sql("GRANT CREATE ON SCHEMA {s} TO " + function_owner, as_owner=False)
    sandbox.sql(
        "SET ROLE " + function_owner + "; CREATE FUNCTION {s}.tenant_ok(t uuid) RETURNS boolean LANGUAGE sql"
        " STABLE AS $$ SELECT t = NULLIF(current_setting('app.current_tenant_id', true), '')::uuid $$;"
        "RESET ROLE",
        as_owner=False,
    )
    sandbox.table(policy="USING ({s}.tenant_ok(tenant_id))", grants="")
    sandbox.sql(
        "GRANT SELECT ON {s}.t TO " + app + "; GRANT " + function_owner + " TO " + app, as_owner=False
    )
    alter = (
        f"CREATE OR REPLACE FUNCTION {sandbox.schema}.tenant_ok(t uuid) RETURNS boolean LANGUAGE sql STABLE"
        " AS $$ SELECT true $$"
    )
    with connected(sandbox, app, tenant=TENANT_A) as conn:
        assert tenants_seen(conn, sandbox.schema + ".t") == {TENANT_A}
        conn.exec_driver_sql(alter)
        assert tenants_seen(conn, sandbox.schema + ".t") == {TENANT_A, TENANT_B}  # still bound to A
    (found,) = findings(sandbox, "PGT040", role=app)
    assert "tenant_isolation on " + sandbox.schema + ".t" in found.message
    fix(sandbox, found)
    with (
        connected(sandbox, app, tenant=TENANT_A) as conn,
        pytest.raises(DBAPIError, match=r"permission denied|must be owner"),
    ):
        conn.exec_driver_sql(alter)
    assert findings(sandbox, "PGT040", role=app) == []


# ----------------------------------------------------------------------------- stored defaults


def test_stored_tenant_default_makes_no_tenant_a_tenant(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    sandbox.table(grants="")
    sandbox.sql("GRANT SELECT ON {s}.t TO " + app, as_owner=False)
    sandbox.sql(
        f"ALTER ROLE {app} IN DATABASE \"{sandbox.database.name}\" SET app.current_tenant_id = '{TENANT_B}'",
        as_owner=False,
    )
    with connected(sandbox, app) as conn:  # no tenant bound
        assert tenants_seen(conn, sandbox.schema + ".t") == {TENANT_B}
    (found,) = findings(sandbox, "PGT041", role=app)
    assert found.object == "role " + app
    assert str(TENANT_B) in found.message and "in database" in found.message
    fix(sandbox, found)
    with connected(sandbox, app) as conn:
        assert tenants_seen(conn, sandbox.schema + ".t") == set()
    assert findings(sandbox, "PGT041", role=app) == []


# ----------------------------------------------------------------------------- SECURITY DEFINER


def hijack_setup(box: Sandbox, app: str, owner: str) -> str:
    """A SECURITY DEFINER helper owned by ``owner`` that calls lower() unqualified, and a schema where the
    app may create functions (as public was before PostgreSQL 15); returns that schema."""
    scratch = box.schema + "_scratch"
    box.sql(
        "CREATE SCHEMA " + scratch + " AUTHORIZATION " + app + ";"
        "GRANT USAGE ON SCHEMA " + scratch + " TO PUBLIC;"  # names are looked up as the owner
        "CREATE FUNCTION {s}.normalized(q text) RETURNS text LANGUAGE sql SECURITY DEFINER"
        " AS $$ SELECT lower(q) $$;"
        "ALTER FUNCTION {s}.normalized(text) OWNER TO " + owner + ";"
        "REVOKE EXECUTE ON FUNCTION {s}.normalized(text) FROM PUBLIC;"
        "GRANT EXECUTE ON FUNCTION {s}.normalized(text) TO " + app,
        as_owner=False,
    )
    return scratch


def test_definer_function_with_open_search_path_lets_the_app_switch_rls_off(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    sandbox.table(grants="")
    sandbox.sql("GRANT SELECT ON {s}.t TO " + app, as_owner=False)
    scratch = hijack_setup(sandbox, app, sandbox.database.roles.owner)  # the owner of the tenant table
    payload = (
        f"CREATE FUNCTION {scratch}.lower(text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN "
        f"EXECUTE 'ALTER TABLE {sandbox.schema}.t DISABLE ROW LEVEL SECURITY'; RETURN $1; END $$;"
    )
    call = (
        f"SET search_path = {scratch}, pg_catalog; SELECT {sandbox.schema}.normalized('X'); RESET search_path"
    )
    try:
        with connected(sandbox, app, tenant=TENANT_A) as conn:
            conn.exec_driver_sql(payload)
            conn.exec_driver_sql(call)
            assert tenants_seen(conn, sandbox.schema + ".t") == {TENANT_A, TENANT_B}
        sandbox.sql("ALTER TABLE {s}.t ENABLE ROW LEVEL SECURITY")
        (found,) = findings(sandbox, "PGT042", role=app)
        assert "caller's search_path" in found.message and "owns tenant table" in found.message
        fix(sandbox, found)
        with connected(sandbox, app, tenant=TENANT_A) as conn:
            conn.exec_driver_sql(call)
            assert tenants_seen(conn, sandbox.schema + ".t") == {TENANT_A}
        assert findings(sandbox, "PGT042", role=app) == []
    finally:
        sandbox.sql("DROP SCHEMA " + scratch + " CASCADE", as_owner=False)


def test_definer_function_with_open_search_path_lends_its_owners_rights(sandbox: Sandbox) -> None:
    app = login_role(sandbox)
    clerk = sandbox.role()
    sandbox.sql("CREATE TABLE {s}.payroll (amount int); INSERT INTO {s}.payroll VALUES (4242)")
    sandbox.sql("GRANT SELECT ON {s}.payroll TO " + clerk)
    scratch = hijack_setup(sandbox, app, clerk)
    try:
        with connected(sandbox, app) as conn, pytest.raises(DBAPIError, match="permission denied"):
            conn.exec_driver_sql(f"SELECT * FROM {sandbox.schema}.payroll")
        with connected(sandbox, app) as conn:
            conn.exec_driver_sql(
                f"CREATE FUNCTION {scratch}.lower(text) RETURNS text LANGUAGE sql AS "
                f"$$ SELECT string_agg(amount::text, ',') FROM {sandbox.schema}.payroll $$;"
                f"SET search_path = {scratch}, pg_catalog"
            )
            assert conn.exec_driver_sql(f"SELECT {sandbox.schema}.normalized('X')").scalar_one() == "4242"
        (found,) = findings(sandbox, "PGT043", role=app)
        assert clerk in found.message
        assert findings(sandbox, "PGT042", role=app) == []
        fix(sandbox, found)
        with connected(sandbox, app) as conn:
            conn.exec_driver_sql(f"SET search_path = {scratch}, pg_catalog")
            assert conn.exec_driver_sql(f"SELECT {sandbox.schema}.normalized('X')").scalar_one() == "x"
        assert findings(sandbox, "PGT043", role=app) == []
    finally:
        sandbox.sql("DROP SCHEMA " + scratch + " CASCADE", as_owner=False)


# ----------------------------------------------------------------------------- triggers and rules


def test_trigger_and_rule_copy_tenant_rows_into_a_shared_table(sandbox: Sandbox) -> None:
    sandbox.table()
    sandbox.sql(
        "CREATE TABLE {s}.activity (body text); CREATE TABLE {s}.changes (body text);"
        "GRANT SELECT, INSERT ON {s}.activity, {s}.changes TO {app};"
        "CREATE FUNCTION {s}.log_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO activity VALUES (NEW.body); RETURN NEW; END $$;"
        "CREATE TRIGGER log_note AFTER INSERT ON {s}.t FOR EACH ROW EXECUTE FUNCTION {s}.log_note();"
        "CREATE RULE keep_changes AS ON UPDATE TO {s}.t DO ALSO INSERT INTO {s}.changes VALUES (NEW.body)"
    )
    with connected(sandbox, tenant=TENANT_B) as conn:
        conn.exec_driver_sql(f"SET search_path = {sandbox.schema}")
        conn.execute(text("INSERT INTO t (tenant_id, body) VALUES (:t, 'B secret')"), {"t": TENANT_B})
        conn.execute(text("UPDATE t SET body = 'B plan' WHERE body = 'a'"))
    with connected(sandbox, tenant=TENANT_A) as conn:
        copied = conn.exec_driver_sql(
            f"SELECT body FROM {sandbox.schema}.activity UNION ALL SELECT body FROM {sandbox.schema}.changes"
        )
        assert set(copied.scalars()) == {"B secret", "B plan"}
    found = findings(sandbox, "PGT044")
    assert sorted(f.object.split(" ")[0] for f in found) == ["rule", "trigger"]
    assert all(f.object.endswith(" on " + sandbox.schema + ".t") for f in found)
    for finding in found:
        fix(sandbox, finding)
    with connected(sandbox, tenant=TENANT_A) as conn, pytest.raises(DBAPIError, match="permission denied"):
        conn.exec_driver_sql(f"SELECT body FROM {sandbox.schema}.activity")
    assert findings(sandbox, "PGT044") == []


# ----------------------------------------------------------------------------- exclusion constraints


def test_exclusion_constraint_without_the_tenant_column_is_an_oracle(sandbox: Sandbox) -> None:
    sandbox.table(seed=False)
    sandbox.sql("ALTER TABLE {s}.t ADD CONSTRAINT t_body_excl EXCLUDE USING btree (body WITH =)")
    with sandbox.admin.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {sandbox.schema}.t (tenant_id, body) VALUES (:t, 'room 7')"), {"t": TENANT_B}
        )
    insert = text(f"INSERT INTO {sandbox.schema}.t (tenant_id, body) VALUES (:t, :b)")
    with connected(sandbox, tenant=TENANT_A) as conn:
        assert tenants_seen(conn, sandbox.schema + ".t") == set()
        with pytest.raises(DBAPIError, match="exclusion constraint"):  # so another tenant has 'room 7'
            conn.execute(insert, {"t": TENANT_A, "b": "room 7"})
    (found,) = findings(sandbox, "PGT045")
    assert "t_body_excl" in found.message
    fix(sandbox, found)
    with connected(sandbox, tenant=TENANT_A) as conn:
        conn.execute(insert, {"t": TENANT_A, "b": "room 7"})
    assert findings(sandbox, "PGT045") == []


# ----------------------------------------------------------------------------- temporary tables


def test_temporary_table_shadows_a_tenant_table_across_tenants(sandbox: Sandbox) -> None:
    sandbox.table()
    database = '"' + sandbox.database.name + '"'
    sandbox.sql("GRANT TEMPORARY ON DATABASE " + database + " TO PUBLIC", as_owner=False)
    try:
        with connected(sandbox, tenant=TENANT_A) as conn:  # one pooled connection, tenant after tenant
            conn.exec_driver_sql(f"SET search_path = {sandbox.schema}")
            conn.exec_driver_sql(  # made inside a function, where no statement check sees it
                "CREATE FUNCTION pg_temp.plant() RETURNS void LANGUAGE sql AS "
                "$$ CREATE TEMP TABLE t (id bigint, tenant_id uuid, body text) $$; SELECT pg_temp.plant()"
            )
            conn.execute(BIND, {"t": str(TENANT_B)})
            conn.execute(text("INSERT INTO t (tenant_id, body) VALUES (:t, 'B secret')"), {"t": TENANT_B})
            conn.execute(BIND, {"t": str(TENANT_A)})
            assert conn.execute(text("SELECT body FROM t")).scalars().all() == ["B secret"]
        (found,) = findings(sandbox, "PGT046")
        assert "PUBLIC" in found.message
        fix(sandbox, found)
        with connected(sandbox, tenant=TENANT_A) as conn, pytest.raises(DBAPIError, match="temporary"):
            conn.exec_driver_sql("CREATE TEMP TABLE t (id bigint)")
        assert findings(sandbox, "PGT046") == []
    finally:
        sandbox.sql(
            "REVOKE TEMPORARY ON DATABASE " + database + " FROM PUBLIC, {app}", as_owner=False
        )  # the test databases' own state


# ----------------------------------------------------------------------------- the whole set


def test_every_exposure_rule_is_exercised_here() -> None:
    source = Path(__file__).read_text()
    assert {rule_id for rule_id in EXPOSURE_RULES if f'"{rule_id}"' not in source} == set()
    assert set(RULES) >= {f"PGT0{n}" for n in range(30, 47)}


def test_a_clean_sandbox_has_no_exposure_finding(sandbox: Sandbox) -> None:
    sandbox.table()
    sandbox.sql(
        "CREATE TABLE {s}.orders (id bigserial, tenant_id uuid NOT NULL, PRIMARY KEY (tenant_id, id));"
        "ALTER TABLE {s}.orders ENABLE ROW LEVEL SECURITY; ALTER TABLE {s}.orders FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY tenant_isolation ON {s}.orders USING ({p}) WITH CHECK ({p});"
        "GRANT SELECT, INSERT ON {s}.orders TO {app};"
        "GRANT USAGE ON SEQUENCE {s}.orders_id_seq TO {app};"
        "ALTER TABLE {s}.t ADD CONSTRAINT t_body_excl EXCLUDE USING btree (tenant_id WITH =, body WITH =);"
        "CREATE FUNCTION {s}.safe() RETURNS text LANGUAGE sql SECURITY DEFINER"
        " SET search_path = pg_catalog, pg_temp AS $$ SELECT lower('X') $$"
    )
    report = sandbox.audit(dynamic=False)
    assert [(f.rule, f.message) for f in report.findings if f.rule in EXPOSURE_RULES] == []
