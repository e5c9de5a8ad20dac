"""Reading a statement before it is sent: what would re-point the tenant, and what outlives a transaction.

The tenant setting is only as strong as the SQL that can change it. A statement sent through an
instrumented engine that names the setting anywhere but in ``current_setting(...)`` (``SET``, ``SET LOCAL``,
``RESET``, ``set_config``, a ``DO`` block, ``ALTER ROLE ... SET``, ``UPDATE pg_settings``...) is refused,
in any case, quoting, spacing or comments; so is transaction control sent as SQL (``COMMIT``, ``BEGIN``...),
which would run what follows outside the transaction that carries the tenant. A name built at run time
(``'app.' || 'current_tenant_id'``, a bound parameter of anything but ``set_config``, ``format()`` in
plpgsql) is not seen: the policies must never rely on the setting being unforgeable.

Statements that leave state in the session (temporary objects, holdable cursors, session-level
settings, ``LISTEN``, session advisory locks) are reported, so that the connection is reset before
another tenant's transaction begins on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

from pgtenancy.errors import UnsafeStatementError

__all__ = ["CLEAN", "Verdict", "names_setting", "vet"]


class Verdict(NamedTuple):
    """What one statement text does that pgtenancy cares about."""

    refusal: str | None  # why it must not be sent, or None
    session_state: bool  # it may leave state in the session that outlives its transaction
    set_config: bool  # it calls set_config: its parameters must not name the setting


CLEAN: Final = Verdict(None, False, False)

_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_LINE_COMMENT = re.compile(r"--[^\n]*")
_SPACE_AND_QUOTES = re.compile(r'[\s"]+')
_LITERALS = re.compile(r"\$([a-z_][a-z0-9_]*|)\$.*?\$\1\$|'(?:[^']|'')*'", re.S)  # `$$` too: group 1 empty
_READ: Final = ("current_setting('", "current_setting(e'")
_TRANSACTION_CONTROL = re.compile(
    r"(?:^|;)\s*(begin|start\s+transaction|commit|end|abort|rollback(?!\s+(?:work\s+|transaction\s+)?to\b)"
    r"|prepare|deallocate)\b"
)
_SESSION_STATE = re.compile(
    r"\btemp(?:orary)?\b|pg_temp|\bwith\s+hold\b|\blisten\b|pg_(?:try_)?advisory_lock|set_config"
    r"|(?:^|;)\s*(?:do\b|(?:set|reset)\s+(?!local\b|transaction\b|constraints\b))"
    r"|\bcreate\s+(?:or\s+replace\s+)?(?:function|procedure)\b"
)


def vet(statement: str, setting: str) -> Verdict:
    """The ``Verdict`` on ``statement`` for an engine whose tenant setting is ``setting``."""
    lowered = statement.lower()
    if _repoints(lowered, setting):
        return Verdict(
            f"the statement names the tenant setting {setting!r} other than to read it with "
            "current_setting(); pgtenancy alone sets it, at BEGIN",
            False,
            False,
        )
    code = _LITERALS.sub("''", _LINE_COMMENT.sub(" ", _BLOCK_COMMENT.sub(" ", lowered)))
    control = _TRANSACTION_CONTROL.search(code)
    if control:
        verb = " ".join(control.group(1).split()).upper()
        return Verdict(
            f"{verb} sent as SQL: use the Connection's or Session's commit(), rollback() and begin() "
            "(statements after it would run outside the transaction that carries the tenant)"
            if verb not in ("PREPARE", "DEALLOCATE")
            else f"{verb} sent as SQL: prepared statements outlive the transaction and its tenant",
            False,
            False,
        )
    session_state = bool(_SESSION_STATE.search(lowered))
    return Verdict(None, session_state, "set_config" in lowered) if session_state else CLEAN


def _repoints(lowered: str, setting: str) -> bool:
    """Whether ``setting`` occurs other than as ``current_setting('setting'`` in any normalised form."""
    for variant in (lowered, *_without_comments(lowered)):
        flat = _SPACE_AND_QUOTES.sub("", variant)
        start = flat.find(setting)
        while start != -1:
            if not flat[:start].endswith(_READ):
                return True
            start = flat.find(setting, start + 1)
    return False


def _without_comments(lowered: str) -> tuple[str, str]:
    without_blocks = _BLOCK_COMMENT.sub("", lowered)
    return without_blocks, _LINE_COMMENT.sub("", without_blocks)


def names_setting(parameters: object, setting: str) -> bool:
    """Whether any bound parameter (of one row, or of many) is the setting's name, in any case or spacing."""
    if isinstance(parameters, Mapping):
        values: Iterable[object] = parameters.values()
    elif isinstance(parameters, (list, tuple)):
        values = parameters
    else:
        return False
    for value in values:
        if isinstance(value, str) and _SPACE_AND_QUOTES.sub("", value.lower()) == setting:
            return True
        if isinstance(value, (list, tuple, Mapping)) and names_setting(value, setting):
            return True
    return False


def refuse(verdict: Verdict) -> UnsafeStatementError:
    """The error for a refused statement."""
    return UnsafeStatementError(f"refused before it was sent: {verdict.refusal}")
