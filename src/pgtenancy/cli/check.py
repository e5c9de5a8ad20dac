"""``pgtenancy check``: audit a database, or the one a project's migrations build, for holes between tenants.

Fit for CI: ignore entries with a reason and a baseline accept known findings without hiding them,
SARIF output feeds code-scanning tools, and the exit status says clean (0), findings (1) or a usage,
connection or installation problem (2).
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from pgtenancy.audit import Report, audit
from pgtenancy.audit.report import render_json, render_sarif, render_text
from pgtenancy.audit.suppressions import (
    apply_suppressions,
    load_config,
    parse_ignore_option,
    read_baseline,
    write_baseline,
)
from pgtenancy.config import DEFAULT_SETTING
from pgtenancy.errors import ConfigurationError, TenancyError

__all__ = ["register"]

EXIT_CLEAN, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class OutputFormat(enum.StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"


def check(
    dsn: Annotated[
        str | None,
        typer.Argument(
            help="Database URL, e.g. postgresql://admin@host/db (a superuser is best); "
            "omit it with --alembic or --migrations."
        ),
    ] = None,
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
    output: Annotated[
        OutputFormat,
        typer.Option("--format", help="text (a table), json (one object) or sarif (SARIF 2.1.0)."),
    ] = OutputFormat.text,
    dynamic: Annotated[
        bool,
        typer.Option(
            "--dynamic/--no-dynamic", help="Also probe as the app role in rolled-back transactions."
        ),
    ] = True,
    admin_role: Annotated[
        list[str] | None,
        typer.Option("--admin-role", help="A role of admin tools that bypasses RLS by design (repeatable)."),
    ] = None,
    sealed: Annotated[
        bool,
        typer.Option(
            "--sealed", help="Sealing is declared: every tenant table must be sealed (or sealed = true)."
        ),
    ] = False,
    ignore: Annotated[
        list[str] | None,
        typer.Option(
            "--ignore", help="RULE or RULE:OBJECT: accept those findings (* matches any text); repeatable."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file with a tool.pgtenancy.check table (default: nearest pyproject.toml with one).",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="Baseline file: its findings are accepted (overrides the config's)."),
    ] = None,
    write: Annotated[
        bool,
        typer.Option("--write-baseline", help="Record the current errors and warnings in the baseline file."),
    ] = False,
    alembic: Annotated[
        Path | None,
        typer.Option(
            "--alembic", help="Audit what this alembic.ini's migrations build in an embedded server."
        ),
    ] = None,
    migrations: Annotated[
        Path | None,
        typer.Option("--migrations", help="Like --alembic, for an Alembic script directory (with env.py)."),
    ] = None,
    x_argument: Annotated[
        list[str] | None,
        typer.Option("-x", help="NAME=VALUE passed to the migrations, as alembic -x does (repeatable)."),
    ] = None,
) -> None:
    """Audit a database: exit 0 when clean, 1 on errors or warnings not accepted, 2 on usage or connection."""

    def run(url: str | URL, app_role: str | None) -> Report:
        return audit(
            url,
            role=app_role,
            setting=setting,
            schemas=tuple(schema or ("public",)),
            dynamic=dynamic,
            column=column,
            admin_roles=tuple(admin_role or ()),
            sealed=sealed or settings.sealed,
        )

    try:
        settings = load_config(config)
        accepted = [*settings.ignores, *map(parse_ignore_option, ignore or [])]
        baseline = baseline or settings.baseline
        if write and baseline is None:
            raise ConfigurationError("--write-baseline needs --baseline FILE (or baseline in the config)")
        if baseline is not None and not write:
            accepted += read_baseline(baseline)
        if (dsn is not None) + (alembic is not None) + (migrations is not None) != 1:
            raise ConfigurationError("name the database: a DSN, --alembic FILE or --migrations DIR")
        if dsn is not None:
            report = run(dsn, role)
        else:
            report = _audit_migrations(alembic, migrations, role, x_argument or [], run)
        if baseline is not None and write:
            count = write_baseline(baseline, apply_suppressions(report, accepted).failing)
            typer.echo(f"pgtenancy check: wrote {count} findings to the baseline {baseline}", err=True)
            accepted += read_baseline(baseline)
    except (TenancyError, ArgumentError, NoSuchModuleError) as exc:
        typer.echo(f"pgtenancy check: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    except DBAPIError as exc:
        typer.echo(f"pgtenancy check: cannot audit the database: {exc.orig or exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    except ImportError as exc:
        typer.echo(
            f"pgtenancy check: the database driver is missing ({exc}): pip install 'pgtenancy[cli]'", err=True
        )
        raise typer.Exit(EXIT_USAGE) from exc
    report = apply_suppressions(report, accepted)
    for stale in report.summary["stale_ignores"]:
        typer.echo(
            f"pgtenancy check: warning: stale ignore {stale['rule']} {stale['object']!r} "
            f"({stale['source']}) matches no finding: remove it",
            err=True,
        )
    if output is OutputFormat.json:
        render_json(report, sys.stdout)
    elif output is OutputFormat.sarif:
        render_sarif(report, sys.stdout)
    else:
        render_text(report, sys.stdout)
    raise typer.Exit(EXIT_FINDINGS if report.failing else EXIT_CLEAN)


def _audit_migrations(
    alembic: Path | None,
    migrations: Path | None,
    role: str | None,
    x_arguments: list[str],
    run: Callable[[URL, str], Report],
) -> Report:
    """Build a database with the project's migrations on an embedded server and audit it for ``role``."""
    if role is None:
        raise ConfigurationError(
            "--alembic and --migrations need --role: the role the application connects as "
            "(the migrations get it as -x app_role=NAME)"
        )
    malformed = [argument for argument in x_arguments if "=" not in argument]
    if malformed:
        raise ConfigurationError(f"-x takes NAME=VALUE, not {malformed[0]!r}")
    try:
        from pgtenancy.testing.migrations import migrated_database
    except ImportError as exc:
        raise ConfigurationError(
            f"auditing migrations needs extras: pip install 'pgtenancy[cli,alembic,testing]' ({exc})"
        ) from exc
    with migrated_database(
        app_role=role, config_file=alembic, script_location=migrations, x_arguments=x_arguments
    ) as url:
        return run(url, role)


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to the ``pgtenancy`` command line."""
    app.command("check")(check)
