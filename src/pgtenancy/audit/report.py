"""Rendering a report: a rich table for people, one JSON object or a SARIF log for machines."""

from __future__ import annotations

import json
from typing import IO, Any

import pgtenancy
from pgtenancy.audit.findings import Finding, Report, Rule
from pgtenancy.audit.probes import PROBE_RULES
from pgtenancy.audit.rules import RULES

__all__ = ["SARIF_SCHEMA", "render_json", "render_sarif", "render_text"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_STYLES = {"error": "bold red", "warning": "yellow", "info": "dim"}
_SARIF_LEVELS = {"error": "error", "warning": "warning", "info": "note"}
_OBJECT_KINDS = (  # how findings name objects: "<kind> <name>"; other objects get no kind
    "materialized view",
    "foreign table",
    "table",
    "view",
    "function",
    "policy",
    "role",
    "database",
    "schema",
    "sequence",
    "column",
    "setting",
)


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
    active = [finding for finding in report.findings if not finding.ignored]
    if active:
        table = Table(show_lines=True, expand=False)
        for header in ("severity", "rule", "object", "finding"):
            table.add_column(header, overflow="fold")
        for finding in active:
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
    if report.ignored:
        console.print(
            f"{len(report.ignored)} ignored (accepted by an ignore entry or the baseline):", style="dim"
        )
        ignored = Table(show_header=False, box=None, style="dim", expand=False)
        for _ in range(4):
            ignored.add_column(overflow="fold", style="dim")
        for finding in report.ignored:
            ignored.add_row(
                finding.severity,
                finding.rule,
                finding.object,
                f"{finding.ignore_reason} ({finding.ignored_by})",
            )
        console.print(ignored)
    errors, warnings, info = (summary.get(key, 0) for key in ("errors", "warnings", "info"))
    counts = f"{errors} errors, {warnings} warnings, {info} info, {summary.get('ignored', 0)} ignored"
    console.print(
        f"{counts} "
        f"({summary.get('confirmed', 0)} confirmed by probes) for role {summary.get('role')!r} "
        f"over {summary.get('tenant_tables', 0)} tenant tables in {', '.join(summary.get('schemas', []))}",
        highlight=False,
        markup=False,
    )


def render_sarif(report: Report, file: IO[str]) -> None:
    """Write the report as a SARIF 2.1.0 log: one run, every rule, one result per finding.

    Findings are on database objects, not files: each result has a logical location only. An
    ignored finding carries a ``suppressions`` entry with its reason.
    """
    rules = [*RULES.values(), *PROBE_RULES.values()]
    index = {rule.id: position for position, rule in enumerate(rules)}
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "pgtenancy",
                        "version": pgtenancy.__version__,
                        "rules": [_sarif_rule(rule) for rule in rules],
                    }
                },
                "results": [_sarif_result(finding, index) for finding in report.findings],
                "properties": {"summary": report.summary},
            }
        ],
    }
    file.write(json.dumps(log, indent=2) + "\n")


def _sarif_rule(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.why},
        "help": {"text": rule.fix},
        "defaultConfiguration": {"level": _SARIF_LEVELS[rule.severity]},
    }


def _sarif_result(finding: Finding, index: dict[str, int]) -> dict[str, Any]:
    location: dict[str, Any] = {"fullyQualifiedName": finding.object}
    kind = next((k for k in _OBJECT_KINDS if finding.object.startswith(k + " ")), None)
    if kind is not None:
        location.update(kind=kind, name=finding.object[len(kind) + 1 :])
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "level": _SARIF_LEVELS[finding.severity],
        "message": {"text": finding.message},
        "locations": [{"logicalLocations": [location]}],
        "partialFingerprints": {"ruleAndObject/v1": finding.rule + " " + finding.object},
    }
    if finding.rule in index:
        result["ruleIndex"] = index[finding.rule]
    properties = {
        key: value
        for key in ("fix", "confirmed", "reproduction")
        if (value := getattr(finding, key)) is not None
    }
    if properties:
        result["properties"] = properties
    if finding.ignored:
        result["suppressions"] = [
            {
                "kind": "external",
                "status": "accepted",
                "justification": f"{finding.ignore_reason} ({finding.ignored_by})",
            }
        ]
    return result
