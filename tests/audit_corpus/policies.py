"""Holes in the policies themselves: fail-open forms, loose permissive policies, trusted settings."""

from __future__ import annotations

from tests.audit_corpus.case import (
    B_SECRET,
    TENANT_A,
    TENANT_B,
    Case,
    Exploit,
    Hole,
    NotExploited,
    attempt,
    bind,
    leaked,
)

FAMILY = "policies"
SETTING = "current_setting('app.current_tenant_id', true)"
TABLE = ("table {s}.t",)


def read_as_a(case: Case, table: str = "t") -> str:
    """With A bound, read the table: evidence when B's rows come back."""
    with case.as_tenant(TENANT_A) as conn:
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}." + table)))


def read_after_a_committed(case: Case, table: str = "t") -> str:
    """On a connection that served A (committed), a transaction that binds nothing reads B's rows.

    That is what a pooled connection reads after a commit: the setting is '' (not NULL).
    """
    with case.connect_app() as conn:
        bind(conn, TENANT_A)
        conn.commit()
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}." + table)))


def read_never_bound(case: Case, table: str = "t") -> str:
    """On a fresh connection where no tenant was ever set (a job, a shell): the setting is NULL."""
    with case.connect_app() as conn:
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}." + table)))


def insert_for_b(case: Case, table: str, columns: str = "", values: str = "") -> str:
    """With A bound, insert a row for tenant B; then, as B, find it among B's rows."""
    with case.as_tenant(TENANT_A) as conn:
        done = attempt(
            conn,
            case.fill(
                "INSERT INTO {s}."
                + table
                + " (tenant_id, body"
                + columns
                + ") VALUES (:b, :body"
                + values
                + ")"
            ),
            {"b": TENANT_B, "body": B_SECRET + "-planted-by-a"},
        )
        if done != [1]:
            raise NotExploited("insert for B refused: " + str(done))
        bind(conn, TENANT_B)
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}." + table)), "planted-by-a")


# ----------------------------------------------------------------------------- fail-open forms


def coalesce_default(case: Case) -> None:
    predicate = "tenant_id = COALESCE(NULLIF(" + SETTING + ", '')::uuid, tenant_id)"
    case.tenant_table(policy="USING (" + predicate + ") WITH CHECK (" + predicate + ")")


def is_null_branch(case: Case) -> None:
    predicate = "{p} OR " + SETTING + " IS NULL"
    case.tenant_table(policy="USING (" + predicate + ") WITH CHECK (" + predicate + ")")


def empty_means_all(case: Case) -> None:
    predicate = (
        "CASE WHEN " + SETTING + " = '' THEN true ELSE tenant_id = NULLIF(" + SETTING + ", '')::uuid END"
    )
    case.tenant_table(policy="USING (" + predicate + ") WITH CHECK (" + predicate + ")")


def or_precedence(case: Case) -> None:
    # meant: (status = 'published' OR status = 'draft') AND tenant_id = ...; AND binds tighter than OR
    predicate = "status = 'published' OR status = 'draft' AND {p}"
    case.tenant_table(
        columns="status text NOT NULL DEFAULT 'published'",
        policy="USING (" + predicate + ") WITH CHECK ({p})",
    )


def self_comparison(case: Case) -> None:
    # the setting is read (so it looks bound), but the comparison is the column with itself
    predicate = "tenant_id = tenant_id AND NULLIF(" + SETTING + ", '') IS NOT NULL"
    case.tenant_table(policy="USING (" + predicate + ") WITH CHECK ({p})")


def correlated_subquery(case: Case) -> None:
    # tenants has no tenant_id column: the inner tenant_id is the outer row's, so it equals itself
    case.sql(
        "CREATE TABLE {s}.tenants (id uuid PRIMARY KEY, name text NOT NULL);"
        "INSERT INTO {s}.tenants VALUES ('{a}', 'A'), ('{b}', 'B');"
        "GRANT SELECT ON {s}.tenants TO {app}"
    )
    predicate = "tenant_id = (SELECT tenant_id FROM {s}.tenants WHERE id = NULLIF(" + SETTING + ", '')::uuid)"
    case.tenant_table(policy="USING (" + predicate + ") WITH CHECK ({p})")


def function_coalesce(case: Case) -> None:
    case.sql(
        "CREATE FUNCTION {s}.visible(row_tenant uuid) RETURNS boolean LANGUAGE sql STABLE AS $$"
        " SELECT row_tenant = COALESCE(NULLIF(" + SETTING + ", '')::uuid, row_tenant) $$"
    )
    case.tenant_table(policy="USING ({s}.visible(tenant_id)) WITH CHECK ({s}.visible(tenant_id))")


def function_plpgsql_unbound(case: Case) -> None:
    case.sql(
        "CREATE FUNCTION {s}.may_see(row_tenant uuid) RETURNS boolean LANGUAGE plpgsql STABLE AS $$"
        " DECLARE bound text := " + SETTING + ";"
        " BEGIN"
        "   IF bound IS NULL OR bound = '' THEN RETURN true; END IF;"  # 'maintenance sees everything'
        "   RETURN row_tenant = bound::uuid;"
        " END $$"
    )
    case.tenant_table(policy="USING ({s}.may_see(tenant_id)) WITH CHECK ({p})")


# ----------------------------------------------------------------------------- loose permissive policies


def select_true_beside_correct(case: Case) -> None:
    case.tenant_table()
    case.sql("CREATE POLICY dashboard ON {s}.t FOR SELECT USING (true)")


def insert_true_composite_fk(case: Case) -> None:
    case.tenant_table("parent")
    case.tenant_table(
        "line",
        columns="parent_id bigint NOT NULL,"
        " FOREIGN KEY (tenant_id, parent_id) REFERENCES {s}.parent (tenant_id, id)",
        policy=None,
        seed=False,
    )
    case.sql(
        "CREATE POLICY line_read ON {s}.line FOR SELECT USING ({p});"
        "CREATE POLICY line_update ON {s}.line FOR UPDATE USING ({p}) WITH CHECK ({p});"
        "CREATE POLICY line_delete ON {s}.line FOR DELETE USING ({p});"
        "CREATE POLICY line_insert ON {s}.line FOR INSERT WITH CHECK (true)"
    )
    case.seed_secrets("line", ", parent_id", ", (SELECT min(id) FROM {s}.parent WHERE tenant_id = :t)")


def exploit_insert_true_composite_fk(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        for parent in range(1, 20):  # ids are small integers: guess B's parent keys
            done = attempt(
                conn,
                case.fill("INSERT INTO {s}.line (tenant_id, parent_id, body) VALUES (:b, :parent, :body)"),
                {"b": TENANT_B, "parent": parent, "body": "planted-by-a"},
            )
            if done == [1]:
                bind(conn, TENANT_B)
                rows = attempt(conn, case.fill("SELECT tenant_id, parent_id, body FROM {s}.line"))
                return leaked(rows, "planted-by-a")
    raise NotExploited("no insert for B accepted")


SIGNED_IN = "NULLIF(" + SETTING + ", '') IS NOT NULL"


def _insert_any_tenant(case: Case, columns: str, seed_columns: str, seed_values: str) -> None:
    """A correct policy plus 'any signed-in tenant may insert': the insert policy checks *a* tenant."""
    case.tenant_table("t", columns=columns, seed=False)
    case.sql("CREATE POLICY signed_in_insert ON {s}.t FOR INSERT WITH CHECK (" + SIGNED_IN + ")")
    case.seed_secrets("t", seed_columns, seed_values)


RANGES = (", during, seats", ", tstzrange(now(), now() + interval '1 hour'), int4range(1, 4)")


def insert_any_tenant_ranges(case: Case) -> None:
    _insert_any_tenant(
        case,
        "during tstzrange NOT NULL CHECK (NOT isempty(during)), seats int4range NOT NULL",
        *RANGES,
    )


ENUM_DOMAIN = (", priority, sku", ", 'high', 'ABC-0001'")


def insert_any_tenant_enum_domain(case: Case) -> None:
    case.sql(
        "CREATE TYPE {s}.priority AS ENUM ('low', 'high');"
        "CREATE DOMAIN {s}.sku AS text CHECK (VALUE ~ '^[A-Z]{{3}}-[0-9]{{4}}$')"
    )
    _insert_any_tenant(case, "priority {s}.priority NOT NULL, sku {s}.sku NOT NULL", *ENUM_DOMAIN)


ARRAY_JSON = (", tags, attrs, total", ", ARRAY['x'], '{{\"kind\": \"invoice\"}}', 12.5")


def insert_any_tenant_array_jsonb_generated(case: Case) -> None:
    _insert_any_tenant(
        case,
        "tags text[] NOT NULL CHECK (cardinality(tags) > 0),"
        " attrs jsonb NOT NULL CHECK (attrs ? 'kind'), total numeric(12, 2) NOT NULL,"
        " total_cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED",
        *ARRAY_JSON,
    )


def with_check_without_tenant(case: Case) -> None:
    case.tenant_table(policy="USING ({p}) WITH CHECK (tenant_id IS NOT NULL AND " + SIGNED_IN + ")")


def exploit_with_check_without_tenant(case: Case) -> str:
    """No WHERE (which would apply the SELECT policy to the new rows too): A's rows move into tenant B."""
    with case.as_tenant(TENANT_A) as conn:
        moved = attempt(
            conn, case.fill("UPDATE {s}.t SET tenant_id = :b, body = 'planted-by-a'"), {"b": TENANT_B}
        )
        if moved != [2]:
            raise NotExploited("update refused: " + str(moved))
        bind(conn, TENANT_B)
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")), "planted-by-a")


def delete_any_signed_in(case: Case) -> None:
    case.tenant_table()
    case.sql("CREATE POLICY purge ON {s}.t FOR DELETE USING (" + SIGNED_IN + ")")


def exploit_delete_any_signed_in(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        deleted = attempt(conn, case.fill("DELETE FROM {s}.t"))  # no WHERE: only the DELETE policy applies
        bind(conn, TENANT_B)
        left = attempt(conn, case.fill("SELECT count(*) FROM {s}.t"))
        if deleted != [4] or left != [(0,)]:
            raise NotExploited(f"deleted {deleted}, B has {left} left")
        return (
            f"with A bound DELETE removed {deleted[0]} rows; B has {left[0][0]} left (" + B_SECRET + " gone)"
        )


def policy_to_member_role(case: Case) -> None:
    support = case.role()
    case.names["support"] = support
    case.sql("GRANT {support} TO {app}", as_owner=False)
    case.tenant_table()
    case.sql("CREATE POLICY support_read ON {s}.t FOR SELECT TO {support} USING (true)")


def policy_to_settable_role(case: Case) -> None:
    # the app role does not inherit it, but may SET ROLE to it: the policy is one statement away
    support = case.role()
    case.names["support"] = support
    case.sql("ALTER ROLE {app} NOINHERIT; GRANT {support} TO {app}", as_owner=False)
    case.tenant_table()
    case.sql(
        "GRANT SELECT ON {s}.t TO {support};"
        "CREATE POLICY support_read ON {s}.t FOR SELECT TO {support} USING (true)"
    )


def exploit_policy_to_settable_role(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        conn.exec_driver_sql(case.fill("SET LOCAL ROLE {support}"))
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def trusts_application_name(case: Case) -> None:
    case.tenant_table(
        policy="USING ({p} OR current_setting('application_name') = 'backoffice') WITH CHECK ({p})"
    )


def exploit_trusts_application_name(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        conn.exec_driver_sql("SELECT set_config('application_name', 'backoffice', true)")
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def trusts_is_admin(case: Case) -> None:
    case.tenant_table(policy="USING ({p} OR current_setting('app.is_admin', true) = 'on') WITH CHECK ({p})")


def exploit_trusts_is_admin(case: Case) -> str:
    with case.as_tenant(TENANT_A) as conn:
        conn.exec_driver_sql("SELECT set_config('app.is_admin', 'on', true)")
        return leaked(attempt(conn, case.fill("SELECT tenant_id, body FROM {s}.t")))


def _insert_exploit(columns_values: tuple[str, str]) -> Exploit:
    def exploit(case: Case) -> str:
        return insert_for_b(case, "t", *columns_values)

    return exploit


HOLES = [
    Hole(
        "coalesce_default",
        FAMILY,
        "USING (tenant_id = COALESCE(setting, tenant_id)): with no tenant bound every row matches",
        coalesce_default,
        read_after_a_committed,
        TABLE,
    ),
    Hole(
        "is_null_branch",
        FAMILY,
        "... OR current_setting(...) IS NULL: a connection that never bound a tenant reads everyone",
        is_null_branch,
        read_never_bound,
        TABLE,
    ),
    Hole(
        "empty_means_all",
        FAMILY,
        "CASE WHEN setting = '' THEN true: after a commit the pooled connection reads '' and sees all",
        empty_means_all,
        read_after_a_committed,
        TABLE,
    ),
    Hole(
        "or_precedence",
        FAMILY,
        "status = 'published' OR status = 'draft' AND tenant: AND binds first, published rows of all tenants",
        or_precedence,
        read_as_a,
        TABLE,
    ),
    Hole(
        "self_comparison",
        FAMILY,
        "tenant_id = tenant_id AND a tenant is bound: reads the setting, compares the column with itself",
        self_comparison,
        read_as_a,
        TABLE,
    ),
    Hole(
        "correlated_subquery",
        FAMILY,
        "tenant_id = (SELECT tenant_id FROM tenants WHERE id = setting): tenant_id is the outer row's",
        correlated_subquery,
        read_as_a,
        TABLE,
    ),
    Hole(
        "function_coalesce",
        FAMILY,
        "policy through a SQL function whose body is COALESCE(setting, row tenant)",
        function_coalesce,
        read_after_a_committed,
        TABLE,
    ),
    Hole(
        "function_plpgsql_unbound",
        FAMILY,
        "policy through a PL/pgSQL function returning true when no tenant is bound",
        function_plpgsql_unbound,
        read_after_a_committed,
        TABLE,
    ),
    Hole(
        "select_true_beside_correct",
        FAMILY,
        "a correct policy plus a permissive FOR SELECT USING (true) for a dashboard",
        select_true_beside_correct,
        read_as_a,
        TABLE,
    ),
    Hole(
        "insert_true_composite_fk",
        FAMILY,
        "FOR INSERT WITH CHECK (true) on a child whose FK (tenant_id, parent_id) needs B's parent key",
        insert_true_composite_fk,
        exploit_insert_true_composite_fk,
        ("table {s}.line",),
    ),
    Hole(
        "insert_any_tenant_ranges",
        FAMILY,
        "insert policy checks that some tenant is bound; NOT NULL tstzrange and int4range columns",
        insert_any_tenant_ranges,
        _insert_exploit(RANGES),
        TABLE,
    ),
    Hole(
        "insert_any_tenant_enum_domain",
        FAMILY,
        "insert policy checks that some tenant is bound; NOT NULL enum and CHECKed domain columns",
        insert_any_tenant_enum_domain,
        _insert_exploit(ENUM_DOMAIN),
        TABLE,
    ),
    Hole(
        "insert_any_tenant_array_jsonb_generated",
        FAMILY,
        "insert policy checks that some tenant is bound; CHECKed array and jsonb, a generated column",
        insert_any_tenant_array_jsonb_generated,
        _insert_exploit(ARRAY_JSON),
        TABLE,
    ),
    Hole(
        "with_check_without_tenant",
        FAMILY,
        "WITH CHECK (tenant_id IS NOT NULL AND a tenant is bound): A moves its row into tenant B",
        with_check_without_tenant,
        exploit_with_check_without_tenant,
        TABLE,
    ),
    Hole(
        "delete_any_signed_in",
        FAMILY,
        "FOR DELETE USING (a tenant is bound) beside a correct policy: A deletes B's rows",
        delete_any_signed_in,
        exploit_delete_any_signed_in,
        TABLE,
    ),
    Hole(
        "policy_to_member_role",
        FAMILY,
        "FOR SELECT TO support USING (true), and the app role is a member of support",
        policy_to_member_role,
        read_as_a,
        TABLE,
    ),
    Hole(
        "policy_to_settable_role",
        FAMILY,
        "FOR SELECT TO support USING (true); the NOINHERIT app role can SET ROLE support",
        policy_to_settable_role,
        exploit_policy_to_settable_role,
        ("table {s}.t", "role {app}"),
    ),
    Hole(
        "trusts_application_name",
        FAMILY,
        "... OR current_setting('application_name') = 'backoffice': any client sets it",
        trusts_application_name,
        exploit_trusts_application_name,
        TABLE,
    ),
    Hole(
        "trusts_is_admin",
        FAMILY,
        "... OR current_setting('app.is_admin', true) = 'on': any statement can set it",
        trusts_is_admin,
        exploit_trusts_is_admin,
        TABLE,
    ),
]
