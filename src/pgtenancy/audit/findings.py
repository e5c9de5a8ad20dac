"""What an audit reports: rules, findings and the report that gathers them."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = ["SEVERITIES", "Finding", "Report", "Rule", "Severity"]

Severity: TypeAlias = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
_COUNTS = ("errors", "warnings", "info", "confirmed", "ignored")


@dataclass(frozen=True)
class Finding:
    """One problem found: which rule, how bad, on which object, why, and how to fix it."""

    rule: str
    severity: Severity
    object: str
    message: str
    fix: str | None = None
    confirmed: bool | None = None  # True: a dynamic probe crossed tenants for real
    reproduction: str | None = None  # SQL that shows a confirmed leak
    ignore_reason: str | None = None  # why an ignore entry or the baseline accepts this finding
    ignored_by: str | None = None  # where that entry is: a pyproject.toml, a baseline file, --ignore

    @property
    def ignored(self) -> bool:
        """Whether an ignore entry or the baseline accepts this finding (it is reported, never failing)."""
        return self.ignore_reason is not None

    @property
    def failing(self) -> bool:
        """Whether this finding should fail a CI run (errors and warnings do, info and ignored ones not)."""
        return self.severity != "info" and not self.ignored

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: optional keys appear only when they carry a value."""
        data: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity,
            "object": self.object,
            "message": self.message,
        }
        for key in ("fix", "confirmed", "reproduction"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        if self.ignored:
            data.update(ignored=True, ignore_reason=self.ignore_reason, ignored_by=self.ignored_by)
        return data


@dataclass(frozen=True)
class Rule:
    """A check with a stable id: ``PGT0xx`` read the catalog, ``PGT1xx`` are dynamic probes."""

    id: str
    severity: Severity
    title: str
    why: str
    fix: str

    def finding(self, obj: str, message: str, **extra: Any) -> Finding:
        """A finding of this rule on ``obj``."""
        return Finding(rule=self.id, severity=self.severity, object=obj, message=message, **extra)


@dataclass(frozen=True)
class Report:
    """The findings of one audit, worst first, and a summary of what was audited."""

    findings: tuple[Finding, ...]
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, findings: Iterable[Finding], **summary: Any) -> Report:
        """A report with findings sorted by severity, rule and object, and their counts in the summary.

        ``errors``, ``warnings`` and ``info`` count the findings that are not ignored; ``ignored`` the rest.
        """
        ordered = tuple(sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), f.rule, f.object)))
        active = [f for f in ordered if not f.ignored]
        counts = {
            "errors": sum(f.severity == "error" for f in active),
            "warnings": sum(f.severity == "warning" for f in active),
            "info": sum(f.severity == "info" for f in active),
            "confirmed": sum(bool(f.confirmed) for f in active),
            "ignored": len(ordered) - len(active),
        }
        return cls(ordered, {**counts, **summary})

    def with_findings(self, findings: Iterable[Finding], **summary: Any) -> Report:
        """The same audit with other findings (some now ignored): counts recomputed, ``summary`` added."""
        kept = {key: value for key, value in self.summary.items() if key not in _COUNTS}
        return Report.build(findings, **{**kept, **summary})

    @property
    def failing(self) -> tuple[Finding, ...]:
        """The errors and warnings: what makes ``pgtenancy check`` exit 1."""
        return tuple(f for f in self.findings if f.failing)

    @property
    def ignored(self) -> tuple[Finding, ...]:
        """The findings an ignore entry or the baseline accepts: reported, but never failing."""
        return tuple(f for f in self.findings if f.ignored)

    def rules(self) -> set[str]:
        """The ids of every rule that fired."""
        return {f.rule for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        """``{"findings": [...], "summary": {...}}``."""
        return {"findings": [f.to_dict() for f in self.findings], "summary": dict(self.summary)}

    def to_json(self) -> str:
        """The report as one JSON object."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)
