"""The tenant predicate, rendered in this one place for policies, column defaults, fixes and templates.

``tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)``: ``NULLIF``
turns the ``''`` a reset setting reads into NULL, which matches no row, and the scalar subquery is
evaluated once per query (an InitPlan) so the tenant index stays usable.
"""

from __future__ import annotations

from pgtenancy.config import sql_type_name, validate_setting_name

__all__ = ["tenant_predicate_sql", "tenant_value_sql"]


def tenant_value_sql(setting: str, key_type: str = "uuid", *, sql_type: str | None = None) -> str:
    """``NULLIF(current_setting('<setting>', true), '')::<type>``: the bound tenant, NULL when there is none.

    The setting name is validated (a lowercase two-part name cannot hold a quote), so it is safe to
    write as a literal.

    :param sql_type: the SQL type to cast to, as the catalog prints a column's type (default: the key
        type's own: uuid, bigint or text).
    """
    literal = "'" + validate_setting_name(setting) + "'"
    return "NULLIF(current_setting(" + literal + ", true), '')::" + (sql_type or sql_type_name(key_type))


def tenant_predicate_sql(
    quoted_column: str,
    setting: str,
    key_type: str = "uuid",
    *,
    citus: bool = False,
    sql_type: str | None = None,
) -> str:
    """``<column> = (SELECT <tenant value>)``; with ``citus=True`` without the subquery, which Citus
    cannot route.

    :param quoted_column: the tenant column, already quoted as an identifier by the caller.
    """
    value = tenant_value_sql(setting, key_type, sql_type=sql_type)
    return quoted_column + " = " + (value if citus else "(SELECT " + value + ")")
