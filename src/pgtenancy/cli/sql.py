"""``pgtenancy sql ...``: print the SQL of the migration operations for a table, role or grant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from pgtenancy import sqlgen
from pgtenancy.config import DEFAULT_SETTING, KEY_TYPES
from pgtenancy.errors import TenancyError

__all__ = ["register"]

Table = Annotated[str, typer.Option("--table", "-t", help="the table to isolate")]
Column = Annotated[str, typer.Option("--column", "-c", help="its tenant column")]
Schema = Annotated[
    str | None, typer.Option("--schema", "-s", help="the table's schema (default: search_path)")
]
KeyType = Annotated[str, typer.Option("--key-type", help="type of the tenant ids: " + ", ".join(KEY_TYPES))]
Setting = Annotated[str, typer.Option("--setting", help="the custom setting the policy reads")]
Citus = Annotated[bool, typer.Option("--citus", help="write the policy without the (SELECT ...) wrapper")]


def _print(render: Callable[[], str]) -> None:
    """Print the rendered SQL, or the reason it was refused (exit status 2)."""
    try:
        sql = render()
    except TenancyError as exc:
        typer.echo("pgtenancy: " + str(exc), err=True)
        raise typer.Exit(2) from exc
    typer.echo(sql, nl=False)


def register(app: typer.Typer) -> None:
    """Add the ``sql`` command group (``enable``, ``disable``, ``role``, ``grant``, ``revoke-temporary``,
    and for sealing ``seal-schema``, ``seal``, ``hide-activity``)."""
    sql_app = typer.Typer(help="Print the SQL of pgtenancy's migration operations.", no_args_is_help=True)

    @sql_app.command()
    def enable(
        table: Table,
        column: Column = "tenant_id",
        schema: Schema = None,
        key_type: KeyType = "uuid",
        setting: Setting = DEFAULT_SETTING,
        citus: Citus = False,
    ) -> None:
        """SQL isolating TABLE: ENABLE + FORCE row level security, the tenant policy, a tenant index."""
        _print(lambda: sqlgen.render_enable_sql(table, column, schema, key_type, setting, citus))

    @sql_app.command()
    def disable(
        table: Table,
        column: Column = "tenant_id",
        schema: Schema = None,
        key_type: KeyType = "uuid",
        setting: Setting = DEFAULT_SETTING,
        citus: Citus = False,
    ) -> None:
        """SQL undoing `sql enable`: pgtenancy's index and policy dropped, RLS off."""
        _print(lambda: sqlgen.render_disable_sql(table, column, schema, key_type, setting, citus))

    @sql_app.command()
    def role(
        name: Annotated[str, typer.Option("--name", "-n", help="the role the application connects as")],
        login: Annotated[bool, typer.Option("--login/--no-login", help="may the role log in")] = True,
    ) -> None:
        """SQL creating a role that RLS binds (set its password separately: ALTER ROLE ... PASSWORD)."""
        _print(lambda: sqlgen.render_create_role_sql(name, login=login))

    @sql_app.command()
    def grant(
        role: Annotated[str, typer.Option("--role", "-r", help="the application's role")],
        table: Annotated[str, typer.Option("--table", "-t", help="the tenant table")],
        schema: Schema = None,
    ) -> None:
        """SQL granting ROLE DML on TABLE and USAGE on its sequences; TRUNCATE, REFERENCES, TRIGGER off."""
        _print(lambda: sqlgen.render_grant_sql(role, table, schema))

    @sql_app.command("revoke-temporary")
    def revoke_temporary(
        role: Annotated[str, typer.Option("--role", "-r", help="the application's role")],
    ) -> None:
        """SQL taking TEMPORARY on the current database from ROLE and PUBLIC (temp tables escape RLS)."""
        _print(lambda: sqlgen.render_revoke_temporary_sql(role))

    @sql_app.command("seal-schema")
    def seal_schema(
        schema: Annotated[str, typer.Option("--schema", help="the seal schema")] = "pgtenancy_seal",
        setting: Setting = DEFAULT_SETTING,
    ) -> None:
        """SQL creating the seal's verifier, key table and add_key (see docs/security.md)."""
        _print(lambda: sqlgen.render_seal_schema_sql(schema, setting))

    @sql_app.command()
    def seal(
        table: Table,
        column: Column = "tenant_id",
        schema: Schema = None,
        key_type: KeyType = "uuid",
        unseal: Annotated[bool, typer.Option("--unseal", help="back to the plain policy")] = False,
    ) -> None:
        """SQL switching an isolated TABLE's policy to the sealed form (or back, with --unseal)."""
        _print(lambda: sqlgen.render_seal_sql(table, column, schema, key_type, sealed=not unseal))

    @sql_app.command("hide-activity")
    def hide_activity(
        role: Annotated[str, typer.Option("--role", "-r", help="the application's role")],
    ) -> None:
        """SQL keeping ROLE's statements (and seals) out of pg_stat_activity and pg_stat_statements."""
        _print(lambda: sqlgen.render_hide_activity_sql(role))

    app.add_typer(sql_app, name="sql")
