"""Holes beside the tables: views, copies, foreign tables, sequences, large objects, rules and triggers."""

from __future__ import annotations

from sqlalchemy import Engine

from tests.audit_corpus.case import (
    A_SECRET,
    B_SECRET,
    TENANT_A,
    Case,
    Exploit,
    Hole,
    NotExploited,
    attempt,
)
from tests.audit_corpus.policies import read_as_a
from tests.audit_corpus.roles import exploit_large_objects

FAMILY = "objects"


def definer_view(case: Case) -> None:
    # RLS enabled but not forced: the owner, whose rights the view runs with, skips the policy
    case.tenant_table(force=False)
    case.sql("CREATE VIEW {s}.v AS SELECT tenant_id, body FROM {s}.t; GRANT SELECT ON {s}.v TO {app}")


def materialized_view(case: Case) -> None:
    case.tenant_table()
    case.sql(
        "CREATE MATERIALIZED VIEW {s}.mv AS SELECT tenant_id, body FROM {s}.t;"
        "GRANT SELECT ON {s}.mv TO {app}",
        as_owner=False,
    )


def file_fdw_missing(admin: Engine) -> str | None:
    with admin.connect() as conn:
        available = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'file_fdw'"
        ).scalar()
    return None if available else "the server has no file_fdw extension (contrib not installed)"


def foreign_table(case: Case) -> None:
    # a nightly export of every tenant, read through file_fdw (the same with postgres_fdw to a replica)
    export = "printf ''{a},{a_secret}\\n{b},{b_secret}\\n''"
    case.sql(
        "CREATE EXTENSION IF NOT EXISTS file_fdw SCHEMA {s};"
        "CREATE SERVER {s}_files FOREIGN DATA WRAPPER file_fdw;"
        "CREATE FOREIGN TABLE {s}.partner_export (tenant_id uuid, body text) SERVER {s}_files"
        " OPTIONS (program '" + export + "', format 'csv');"
        "GRANT SELECT ON {s}.partner_export TO {app}",
        as_owner=False,
        a_secret=A_SECRET,
        b_secret=B_SECRET,
    )
    case.on_close.append("DROP SERVER IF EXISTS {s}_files CASCADE")


def sequence_last_value(case: Case) -> None:
    case.sql("CREATE SEQUENCE {s}.invoice_number")
    case.tenant_table(columns="number bigint NOT NULL DEFAULT nextval('{s}.invoice_number')")
    case.sql("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {app}")


def exploit_sequence_last_value(case: Case) -> str:
    """A watches the shared counter move while B issues an invoice (A issues none)."""
    read = "SELECT last_value FROM {s}.invoice_number"
    with case.as_tenant(TENANT_A) as conn:
        before = attempt(conn, case.fill(read))
        if isinstance(before, str):
            raise NotExploited(before)
        with case.admin.begin() as other:  # tenant B's request, elsewhere
            other.exec_driver_sql(case.fill("SELECT nextval('{s}.invoice_number')"))
        after = attempt(conn, case.fill(read))
    if isinstance(after, str) or after[0][0] <= before[0][0]:
        raise NotExploited(f"last_value {before} -> {after}")
    return f"last_value {before[0][0]} -> {after[0][0]}: A counts the invoices of the other tenants"


def large_object_granted(case: Case) -> None:
    # the app serves downloads, so every upload is granted to it: whatever tenant it belongs to
    case.tenant_table("attachment", columns="blob oid NOT NULL", seed=False)
    case.seed_secrets("attachment", ", blob", ", lo_from_bytea(0, convert_to(:body, 'UTF8'))")
    case.on_close.append("SELECT lo_unlink(blob) FROM {s}.attachment")
    case.names["lo"] = str(case.scalar("SELECT min(blob) FROM {s}.attachment WHERE tenant_id = '{b}'"))
    with case.admin.begin() as conn:
        for (oid,) in conn.exec_driver_sql(case.fill("SELECT blob FROM {s}.attachment")):
            conn.exec_driver_sql(case.fill("GRANT SELECT ON LARGE OBJECT " + str(int(oid)) + " TO {app}"))


def rule_copies_rows(case: Case) -> None:
    case.sql(
        "CREATE TABLE {s}.activity (at timestamptz NOT NULL DEFAULT now(), summary text NOT NULL);"
        "GRANT SELECT ON {s}.activity TO {app}"
    )
    case.tenant_table(seed=False)
    case.sql(
        "CREATE RULE log_insert AS ON INSERT TO {s}.t DO ALSO"
        " INSERT INTO {s}.activity (summary) VALUES ('new: ' || NEW.body)"
    )
    case.seed_secrets("t")


def trigger_copies_rows(case: Case) -> None:
    case.sql(
        "CREATE TABLE {s}.feed (at timestamptz NOT NULL DEFAULT now(), line text NOT NULL);"
        "GRANT SELECT ON {s}.feed TO {app};"
        "CREATE FUNCTION {s}.to_feed() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO {s}.feed (line) VALUES (NEW.body); RETURN NEW; END $$"
    )
    case.tenant_table(seed=False)
    case.sql("CREATE TRIGGER to_feed AFTER INSERT ON {s}.t FOR EACH ROW EXECUTE FUNCTION {s}.to_feed()")
    case.seed_secrets("t")


def read_table(name: str) -> Exploit:
    def exploit(case: Case) -> str:
        return read_as_a(case, name)

    return exploit


def _read_copy(table: str) -> Exploit:
    def exploit(case: Case) -> str:
        with case.as_tenant(TENANT_A) as conn:
            rows = attempt(conn, case.fill("SELECT * FROM {s}." + table))
        if B_SECRET not in repr(rows):
            raise NotExploited(repr(rows))
        return repr(rows)[:500]

    return exploit


HOLES = [
    Hole(
        "definer_view",
        FAMILY,
        "a view without security_invoker, owned by the table owner of a table whose RLS is not forced",
        definer_view,
        read_table("v"),
        ("view {s}.v",),
    ),
    Hole(
        "materialized_view",
        FAMILY,
        "a materialized view over a tenant table, readable by the app role",
        materialized_view,
        read_table("mv"),
        ("materialized view {s}.mv",),
    ),
    Hole(
        "foreign_table",
        FAMILY,
        "a foreign table (file_fdw) over an export of every tenant, with a tenant column and no RLS",
        foreign_table,
        read_table("partner_export"),
        ("foreign table {s}.partner_export",),
        unavailable=file_fdw_missing,
    ),
    Hole(
        "sequence_last_value",
        FAMILY,
        "SELECT on a sequence shared by all tenants: last_value shows the other tenants' activity",
        sequence_last_value,
        exploit_sequence_last_value,
        ("sequence {s}.invoice_number",),
    ),
    Hole(
        "large_object_granted",
        FAMILY,
        "each tenant's uploads are large objects granted to the app role: any tenant reads them all",
        large_object_granted,
        exploit_large_objects,
        ("large object {lo}", "large objects granted to {app}"),
    ),
    Hole(
        "rule_copies_rows",
        FAMILY,
        "CREATE RULE ... DO ALSO INSERT INTO activity: every tenant's new rows land in a readable table",
        rule_copies_rows,
        _read_copy("activity"),
        ("rule log_insert on {s}.t", "table {s}.activity"),
    ),
    Hole(
        "trigger_copies_rows",
        FAMILY,
        "an AFTER INSERT trigger copies every tenant's rows into a feed table the app can read",
        trigger_copies_rows,
        _read_copy("feed"),
        ("trigger to_feed on {s}.t", "table {s}.feed"),
    ),
]
