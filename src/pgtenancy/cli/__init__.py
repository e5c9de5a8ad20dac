"""The ``pgtenancy`` command line (needs the ``cli`` extra: typer and rich)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def _build_app() -> Any:
    import typer

    import pgtenancy
    from pgtenancy.cli.check import register as register_check
    from pgtenancy.cli.sql import register as register_sql

    app = typer.Typer(help="PostgreSQL row-level security as the wall between tenants.", no_args_is_help=True)
    register_sql(app)
    register_check(app)

    @app.command()
    def version() -> None:
        """Print pgtenancy's version."""
        typer.echo(pgtenancy.__version__)

    @app.command()
    def demo(
        serve: bool = typer.Option(False, "--serve", help="keep the example app running under uvicorn"),
        port: int = typer.Option(8000, help="port for --serve"),
        keep: bool = typer.Option(False, "--keep", help="keep the database's data directory"),
    ) -> None:
        """Start an embedded PostgreSQL, migrate, seed two tenants and prove the example app isolates them."""
        from pgtenancy.demo import run

        raise typer.Exit(run(keep=keep, serve=serve, port=port))

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
