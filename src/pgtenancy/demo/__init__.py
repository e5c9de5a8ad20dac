"""``pgtenancy demo``: an embedded PostgreSQL, the example migrations, the example app proving isolation."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from pathlib import Path

from rich.console import Console

from pgtenancy.demo.database import (
    APP_ROLE,
    TENANTS,
    DemoDatabase,
    describe,
    migrate,
    prepare,
    project_counts,
    seed,
)
from pgtenancy.demo.walkthrough import Step, token, walk, walk_jobs

__all__ = ["run"]


def run(*, keep: bool = False, serve: bool = False, port: int = 8000, console: Console | None = None) -> int:
    """Run the walkthrough (or serve the app with ``serve``); 0 when every step behaved as described."""
    from pgtenancy.testing.server import start_embedded

    console = console or Console()
    directory = Path(tempfile.mkdtemp(prefix="pgtenancy-demo-"))
    with console.status("Starting an embedded PostgreSQL ..."):
        server = start_embedded(directory, keep_data=keep)
    try:
        with console.status("Applying the example migrations (policies, roles, grants) ..."):
            database = prepare(server)
            log = migrate(database)
            seed(database)
        console.print("[bold]Migrations applied[/bold] (Alembic):")
        for line in log.splitlines() + describe(database):
            console.print("  " + line, markup=False, highlight=False)
        key = secrets.token_urlsafe(32)
        if serve:
            return _serve(database, key, port, console)
        return _report(asyncio.run(_walkthrough(database, key)), console)
    finally:
        server.stop()
        if keep:
            console.print(f"Data kept in {directory}")
        else:
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


async def _walkthrough(database: DemoDatabase, key: str) -> list[Step]:
    from pgtenancy.example.app import create_app
    from pgtenancy.example.worker import Worker

    app = create_app(database.app.set(drivername="postgresql+asyncpg").render_as_string(False), jwt_key=key)
    try:
        steps = await walk(app, key, lambda: _audit(database))
        worker = Worker(app.state.engine, signing_key=secrets.token_bytes(32))
        return steps + await walk_jobs(worker, await asyncio.to_thread(project_counts, database))
    finally:
        await app.state.engine.dispose()


async def _audit(database: DemoDatabase) -> Step:
    """``pgtenancy check`` on the demo database, as the superuser auditing the app role."""
    from pgtenancy.audit import audit

    report = await asyncio.to_thread(audit, database.admin, role=APP_ROLE)
    problems = [f for f in report.findings if f.severity in ("error", "warning")]
    detail = "no errors or warnings" if not problems else "; ".join(f"{f.rule} {f.object}" for f in problems)
    return Step(
        f"pgtenancy check finds the demo schema clean ({len(report.findings)} findings in all)",
        not problems,
        detail,
    )


def _report(steps: list[Step], console: Console) -> int:
    for step in steps:
        mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
        console.print(f"{mark} {step.claim}", highlight=False)
        console.print(f"    {step.detail}", markup=False, highlight=False, style="dim")
    passed = sum(step.ok for step in steps)
    if passed == len(steps):
        console.print(f"[bold green]{passed}/{len(steps)} steps behaved as described.[/bold green]")
        return 0
    console.print(
        f"[bold red]{len(steps) - passed} of {len(steps)} steps did NOT behave as described.[/bold red]"
    )
    return 1


def _serve(database: DemoDatabase, key: str, port: int, console: Console) -> int:
    import uvicorn

    from pgtenancy.example.app import create_app

    app = create_app(database.app.set(drivername="postgresql+asyncpg").render_as_string(False), jwt_key=key)
    console.print("[bold]Try it[/bold] (tokens valid for one hour):")
    for tenant, name in TENANTS.items():
        console.print(
            f"  # as {name}\n  curl -s -H 'Authorization: Bearer {token(key, tenant)}' http://127.0.0.1:{port}/projects",
            markup=False,
            highlight=False,
        )
    console.print(f"  # no token\n  curl -s http://127.0.0.1:{port}/projects", markup=False, highlight=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")
    return 0
