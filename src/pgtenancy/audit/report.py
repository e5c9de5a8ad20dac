"""Rendering a report: a rich table for people, one JSON object for machines."""

from __future__ import annotations

from typing import IO

from pgtenancy.audit.findings import Report

__all__ = ["render_json", "render_text"]

_STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}


def render_json(report: Report, file: IO[str]) -> None:
    """Write the report as exactly one JSON object followed by a newline."""
    file.write(report.to_json() + "\n")


def render_text(report: Report, file: IO[str], *, color: bool | None = None) -> None:
    """Write a table of the findings (fix and reproduction under each message) and a summary line."""
    from rich.console import Console  # optional extra: imported on use
    from rich.table import Table
    from rich.text import Text

    width = None if file.isatty() else 160  # CI logs are no terminal: do not wrap at 80 columns
    console = Console(file=file, no_color=color is False, force_terminal=color, width=width, soft_wrap=False)
    summary = report.summary
    if report.findings:
        table = Table(show_lines=True, expand=False)
        for header in ("severity", "rule", "object", "finding"):
            table.add_column(header, overflow="fold")
        for finding in report.findings:
            detail = Text(finding.message)
            if finding.confirmed:
                detail.append("\nconfirmed by a probe", style="bold")
            if finding.fix:
                detail.append("\nfix: " + finding.fix, style="green")
            if finding.reproduction:
                detail.append("\nreproduce:\n" + finding.reproduction, style="cyan")
            table.add_row(
                Text(finding.severity, style=_STYLES[finding.severity]), finding.rule, finding.object, detail
            )
        console.print(table)
    errors, warnings, info = (summary.get(key, 0) for key in ("errors", "warnings", "info"))
    counts = f"{errors} errors, {warnings} warnings, {info} info"
    console.print(
        f"{counts} "
        f"({summary.get('confirmed', 0)} confirmed by probes) for role {summary.get('role')!r} "
        f"over {summary.get('tenant_tables', 0)} tenant tables in {', '.join(summary.get('schemas', []))}",
        highlight=False,
        markup=False,
    )
