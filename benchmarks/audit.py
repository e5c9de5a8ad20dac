"""How long ``pgtenancy check`` takes on many tenant tables: static rules alone, and with the probes.

``python -m benchmarks.audit [--tables 1000]`` builds a database of ``--tables`` tenant tables (every
other one a child of an ``orgs`` table through a composite foreign key, with a CHECK constraint and an
enum column, so the probes plan parent rows and retry values), two tenants' rows in each, and times one
audit of each kind. The goal is absolute (1,000 tables with probes in under 15 s on 2 cores), so the
figures are seconds, with the per-table cost beside them.
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import Connection, column, insert, literal_column, select, table

from benchmarks.harness import benchmark_database
from pgtenancy.audit import audit
from pgtenancy.testing.database import TestRoles

PREDICATE = "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)"


def schema(tables: int) -> object:
    """The schema builder for ``benchmark_database``: ``tables`` tenant tables (trusted constants only)."""

    def build(conn: Connection, roles: TestRoles) -> None:
        app = conn.dialect.identifier_preparer.quote(roles.app)
        conn.exec_driver_sql("CREATE TYPE mood AS ENUM ('calm', 'busy')")
        ddl = [
            "CREATE TABLE orgs (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
            "name text NOT NULL, PRIMARY KEY (tenant_id, id))"
        ]
        for n in range(tables):
            name = f"t{n:04d}"
            parent = (
                ", org_id bigint NOT NULL, FOREIGN KEY (tenant_id, org_id) REFERENCES orgs" if n % 2 else ""
            )
            ddl.append(
                "CREATE TABLE " + name + " (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
                "body text NOT NULL, mood mood NOT NULL, qty int NOT NULL CHECK (qty BETWEEN 1 AND 5)"
                + parent
                + ", PRIMARY KEY (tenant_id, id))"
            )
        for statement in ddl:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(
            "INSERT INTO orgs (tenant_id, name) SELECT t, 'org' FROM (VALUES (gen_random_uuid()), "
            "(gen_random_uuid())) v(t)"
        )
        orgs = table("orgs", column("tenant_id"), column("id"))
        for n in range(tables):
            names = ["tenant_id", "body", "mood", "qty", *(["org_id"] if n % 2 else [])]
            values = [orgs.c.tenant_id, *(literal_column(v) for v in ("'b'", "'calm'", "1"))]
            rows = select(*values, *([orgs.c.id] if n % 2 else []))
            target = table(f"t{n:04d}", *(column(c) for c in names))
            conn.execute(insert(target).from_select(names, rows))
        for name in ["orgs", *(f"t{n:04d}" for n in range(tables))]:
            for statement in (
                "ALTER TABLE " + name + " ENABLE ROW LEVEL SECURITY",
                "ALTER TABLE " + name + " FORCE ROW LEVEL SECURITY",
                "CREATE POLICY tenant_isolation ON "
                + name
                + " USING ("
                + PREDICATE
                + ") WITH CHECK ("
                + PREDICATE
                + ")",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON " + name + " TO " + app,
            ):
                conn.exec_driver_sql(statement)

    return build


def main() -> None:
    """Time a static audit and an audit with probes, and print seconds and milliseconds per table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit")
    parser.add_argument("--tables", type=int, default=1000)
    args = parser.parse_args()
    with benchmark_database(schema(args.tables)) as database:  # type: ignore[arg-type]
        url = database.url("admin")
        for dynamic in (False, True):
            started = time.perf_counter()
            report = audit(url, role=database.roles.app, dynamic=dynamic)
            took = time.perf_counter() - started
            kind = "with probes" if dynamic else "static only"
            print(
                f"audit {kind}: {args.tables + 1} tenant tables in {took:.1f} s "
                f"({took / (args.tables + 1) * 1000:.1f} ms per table); "
                f"{report.summary['errors']} errors, {report.summary['warnings']} warnings"
            )


if __name__ == "__main__":
    main()
