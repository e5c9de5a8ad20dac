"""``pgtenancy check``: audit a live database for holes between tenants, fit for CI."""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from pgtenancy.audit import audit
from pgtenancy.audit.report import render_json, render_text
from pgtenancy.config import DEFAULT_SETTING
from pgtenancy.errors import TenancyError

__all__ = ["register"]

EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class OutputFormat(enum.StrEnum):
    text = "text"
    json = "json"


def check(
    dsn: Annotated[
        str, typer.Argument(help="Database URL, e.g. postgresql://admin@host/db (a superuser is best).")
    ],
    role: Annotated[
        str | None,
        typer.Option("--role", help="The role the application connects as (default: the DSN's user)."),
    ] = None,
    setting: Annotated[
        str, typer.Option("--setting", help="The setting that carries the tenant id.")
    ] = DEFAULT_SETTING,
    schema: Annotated[
        list[str] | None, typer.Option("--schema", help="Schema to audit (repeatable; default: public).")
    ] = None,
    column: Annotated[str, typer.Option("--column", help="The tenant column's name.")] = "tenant_id",
    output: Annotated[OutputFormat, typer.Option("--format", help="text (a table) or json (one object).")] = (
        OutputFormat.text
    ),
    dynamic: Annotated[
        bool,
        typer.Option(
            "--dynamic/--no-dynamic", help="Also probe as the app role in rolled-back transactions."
        ),
    ] = True,
) -> None:
    """Audit a live database: exit 0 when clean, 1 on errors or warnings, 2 on usage or connection errors."""
    try:
        report = audit(
            dsn,
            role=role,
            setting=setting,
            schemas=tuple(schema or ("public",)),
            dynamic=dynamic,
            column=column,
        )
    except (TenancyError, ArgumentError, NoSuchModuleError) as exc:
        typer.echo(f"pgtenancy check: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    except DBAPIError as exc:
        typer.echo(f"pgtenancy check: cannot audit the database: {exc.orig or exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    if output is OutputFormat.json:
        render_json(report, sys.stdout)
    else:
        render_text(report, sys.stdout)
    raise typer.Exit(EXIT_FINDINGS if report.failing else EXIT_CLEAN)


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to the ``pgtenancy`` command line."""
    app.command("check")(check)
