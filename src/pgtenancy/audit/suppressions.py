"""Accepted findings: ignore entries (``pyproject.toml``, ``--ignore``) and a baseline file.

An accepted finding is still reported, marked ignored with its reason; it only stops failing the run.
An entry that matches no finding is reported as stale, so that ignores and baselines do not rot.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pgtenancy.audit.findings import Finding, Report
from pgtenancy.audit.probes import PROBE_RULES
from pgtenancy.audit.rules import RULES
from pgtenancy.errors import ConfigurationError

__all__ = [
    "BASELINE_VERSION",
    "CONFIG_TABLE",
    "CheckConfig",
    "Suppression",
    "apply_suppressions",
    "find_pyproject",
    "load_config",
    "parse_ignore_option",
    "read_baseline",
    "write_baseline",
]

CONFIG_TABLE = ("tool", "pgtenancy", "check")  # [tool.pgtenancy.check] in pyproject.toml
BASELINE_VERSION = 1
_BASELINE_REASON = "accepted when the baseline was written"
_ENTRY_KEYS = {"rule", "object", "reason"}


@dataclass(frozen=True)
class Suppression:
    """One accepted finding pattern: a rule id, an object (``*`` matches any text) and why it is accepted."""

    rule: str
    object: str
    reason: str
    source: str  # where the entry is written: a pyproject.toml, a baseline file, or "--ignore"
    glob: bool = True  # False: the object must be equal (baseline entries)
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rule not in RULES and self.rule not in PROBE_RULES:
            raise ConfigurationError(
                f"{self.source}: unknown rule {self.rule!r} in an ignore entry (rules are PGT001...)"
            )
        if not self.reason.strip():
            raise ConfigurationError(f"{self.source}: the ignore entry for {self.rule} needs a reason")
        parts = self.object.split("*") if self.glob else [self.object]
        object.__setattr__(self, "_pattern", re.compile(".*".join(map(re.escape, parts)), re.S))

    def matches(self, finding: Finding) -> bool:
        """Whether this entry accepts ``finding``: same rule, object equal or matching the glob."""
        return finding.rule == self.rule and self._pattern.fullmatch(finding.object) is not None


@dataclass(frozen=True)
class CheckConfig:
    """``[tool.pgtenancy.check]`` of a pyproject.toml: ignore entries, the baseline file, declared sealing."""

    ignores: tuple[Suppression, ...] = ()
    baseline: Path | None = None  # relative paths are resolved against the pyproject.toml's directory
    sealed: bool = False  # every tenant table must be sealed (``sealed = true``)


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml with a ``[tool.pgtenancy.check]`` table, from ``start`` upward."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file() and _check_table(candidate) is not None:
            return candidate
    return None


def load_config(path: Path | None = None, *, start: Path | None = None) -> CheckConfig:
    """Read ``[tool.pgtenancy.check]`` from ``path``, or from the nearest pyproject.toml above ``start``.

    :param path: a TOML file given explicitly (``--config``); it must exist, the table may be absent.
    :param start: where the search upward begins (default: the current directory).
    """
    if path is None:
        path = find_pyproject(start or Path.cwd())
        if path is None:
            return CheckConfig()
    elif not path.is_file():
        raise ConfigurationError(f"config file {str(path)!r} does not exist")
    table = _check_table(path) or {}
    unknown = set(table) - {"ignore", "baseline", "sealed"}
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown key(s) in [tool.pgtenancy.check]: {', '.join(sorted(unknown))}"
        )
    entries = table.get("ignore", [])
    if not isinstance(entries, list):
        raise ConfigurationError(f"{path}: ignore must be an array of tables: ignore = [{{rule = ...}}]")
    baseline = table.get("baseline")
    if baseline is not None and not (isinstance(baseline, str) and baseline):
        raise ConfigurationError(f"{path}: baseline must be a file name")
    sealed = table.get("sealed", False)
    if not isinstance(sealed, bool):
        raise ConfigurationError(f"{path}: sealed must be true or false")
    return CheckConfig(
        ignores=tuple(_entry(entry, str(path), glob=True) for entry in entries),
        baseline=path.parent / baseline if baseline else None,
        sealed=sealed,
    )


def parse_ignore_option(value: str) -> Suppression:
    """``--ignore RULE`` or ``--ignore RULE:OBJECT`` (the object may use ``*``) as an entry."""
    rule, _, obj = value.partition(":")
    return Suppression(rule.strip(), obj.strip() or "*", "accepted on the command line", "--ignore")


def read_baseline(path: Path) -> tuple[Suppression, ...]:
    """The entries of a baseline file written by ``write_baseline``; each matches its object exactly."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"baseline {str(path)!r} does not exist: write it with --write-baseline"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"baseline {str(path)!r} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION:
        raise ConfigurationError(f"baseline {str(path)!r} is not a version {BASELINE_VERSION} baseline")
    entries = data.get("findings")
    if not isinstance(entries, list):
        raise ConfigurationError(f"baseline {str(path)!r} has no findings list")
    return tuple(_entry(entry, str(path), glob=False, default_reason=_BASELINE_REASON) for entry in entries)


def write_baseline(path: Path, findings: Iterable[Finding]) -> int:
    """Write ``findings`` (rule and object each, message for the reader) as a baseline; return how many."""
    entries = sorted({(f.rule, f.object): f.message for f in findings}.items(), key=lambda item: item[0])
    data = {
        "version": BASELINE_VERSION,
        "findings": [
            {"rule": rule, "object": obj, "message": message, "reason": _BASELINE_REASON}
            for (rule, obj), message in entries
        ],
    }
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise ConfigurationError(f"baseline {str(path)!r} cannot be written: {exc}") from exc
    return len(entries)


def apply_suppressions(report: Report, suppressions: Iterable[Suppression]) -> Report:
    """``report`` with every finding an entry matches marked ignored (the first entry's reason wins).

    The summary gains ``stale_ignores``: the entries that matched nothing although their rule ran
    (a probe rule runs only with dynamic probes), each as ``{"rule", "object", "source"}``.
    """
    entries = tuple(suppressions)
    used: set[Suppression] = set()
    findings = []
    for finding in report.findings:
        matching = [entry for entry in entries if entry.matches(finding)]
        used.update(matching)
        if matching and not finding.ignored:
            finding = replace(finding, ignore_reason=matching[0].reason, ignored_by=matching[0].source)
        findings.append(finding)
    ran = set(RULES) | (set(PROBE_RULES) if report.summary.get("dynamic", True) else set())
    stale = [
        {"rule": entry.rule, "object": entry.object, "source": entry.source}
        for entry in entries
        if entry not in used and entry.rule in ran
    ]
    return report.with_findings(findings, stale_ignores=stale)


def _check_table(path: Path) -> Mapping[str, Any] | None:
    """The ``[tool.pgtenancy.check]`` table of a TOML file, or ``None``."""
    try:
        data: Any = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path} cannot be read: {exc}") from exc
    for key in CONFIG_TABLE:
        data = data.get(key) if isinstance(data, dict) else None
    if data is not None and not isinstance(data, dict):
        raise ConfigurationError(f"{path}: [tool.pgtenancy.check] must be a table")
    return data


def _entry(entry: object, source: str, *, glob: bool, default_reason: str | None = None) -> Suppression:
    """One ``{rule = ..., object = ..., reason = ...}`` entry, checked."""
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{source}: an ignore entry must be a table: {{rule = ..., reason = ...}}")
    known = _ENTRY_KEYS | ({"message"} if not glob else set())
    unknown = set(entry) - known
    if unknown:
        raise ConfigurationError(f"{source}: unknown key(s) in an ignore entry: {', '.join(sorted(unknown))}")
    obj = entry.get("object", "*" if glob else None)  # a baseline entry names its object
    rule, reason = entry.get("rule"), entry.get("reason", default_reason)
    if not isinstance(rule, str) or not isinstance(obj, str):
        raise ConfigurationError(f"{source}: an ignore entry needs rule (and object) as strings: {entry}")
    if not isinstance(reason, str):
        raise ConfigurationError(f"{source}: the ignore entry for {rule} {obj!r} needs a reason")
    return Suppression(rule, obj, reason, source, glob=glob)
