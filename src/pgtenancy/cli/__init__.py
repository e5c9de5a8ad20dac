"""The ``pgtenancy`` command line (needs the ``cli`` extra: typer and rich)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def _build_app() -> Any:
    import typer

    import pgtenancy
    from pgtenancy.cli.sql import register as register_sql

    app = typer.Typer(help="PostgreSQL row-level security as the wall between tenants.", no_args_is_help=True)
    register_sql(app)

    @app.command()
    def version() -> None:
        """Print pgtenancy's version."""
        typer.echo(pgtenancy.__version__)

    @app.command()
    def demo() -> None:
        """Start an embedded PostgreSQL and show a query without a tenant filter staying in its tenant."""
        from pgtenancy.demo import run

        raise typer.Exit(run())

    return app


def main() -> None:
    """Entry point of the ``pgtenancy`` console script."""
    try:
        app = _build_app()
    except ImportError as exc:
        sys.stderr.write(f"pgtenancy: the command line needs extras: pip install 'pgtenancy[cli]' ({exc})\n")
        raise SystemExit(2) from exc
    app()


def __getattr__(name: str) -> Any:
    if name == "app":
        return _build_app()
    raise AttributeError(name)
