"""Which rows of other tenants can a row-level security expression admit? Decided on its syntax tree.

PostgreSQL's own parser (pglast, libpg_query) reads each expression as ``pg_get_expr`` prints it, and the
tree is evaluated symbolically, in SQL's three-valued logic, against a row of another tenant in three
scenarios: the tenant setting unset (NULL), reset to ``''`` (a pooled connection after COMMIT), and bound
to a tenant that owns no rows. Anything read from the row or from the client stands for any value; each
outcome carries notes on what it depends on, so an opening that depends on something the analysis cannot
model is reported as "cannot analyse" rather than guessed either way.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias

from pgtenancy.errors import ConfigurationError

if TYPE_CHECKING:
    from pglast import ast, enums

__all__ = [
    "CLIENT_FUNCTIONS",
    "SCENARIOS",
    "Analysis",
    "Opening",
    "Resolver",
    "Scenario",
    "analyse",
    "table_expression",
]

Scenario: TypeAlias = Literal["unset", "empty", "bound"]
SCENARIOS: dict[Scenario, str] = {
    "unset": "with the tenant setting unset (NULL)",
    "empty": "with the tenant setting reset to ''",
    "bound": "with a tenant bound",
}

Resolver: TypeAlias = Callable[[str], "str | None"]
"""A function's definition (``pg_get_functiondef``) by its name as the expression writes it, or None."""

# Functions whose value the client chooses: the address and port it connects from (any proxy or pooler
# in between decides them too), and the text of the statement it sends.
CLIENT_FUNCTIONS = frozenset({"inet_client_addr", "inet_client_port", "current_query"})

# Settings nobody can SET: read-only facts of the server or of the session's login. Any other setting
# (application_name, every custom setting such as app.is_admin) is set by whatever SQL the app sends.
_FIXED_SETTINGS = frozenset(
    {
        "block_size",
        "data_checksums",
        "data_directory_mode",
        "in_hot_standby",
        "integer_datetimes",
        "is_superuser",
        "lc_collate",
        "lc_ctype",
        "max_function_args",
        "max_identifier_length",
        "max_index_keys",
        "segment_size",
        "server_encoding",
        "server_version",
        "server_version_num",
        "session_authorization",
        "wal_block_size",
        "wal_segment_size",
    }
)
_TEXT_TYPES = frozenset(
    {"text", "varchar", "bpchar", "char", "character", "character varying", "name", "citext"}
)
# Types whose input function refuses '' (so ''::uuid raises an error).
_STRICT_INPUT_TYPES = frozenset(
    {
        "uuid",
        "int2",
        "int4",
        "int8",
        "smallint",
        "integer",
        "int",
        "bigint",
        "numeric",
        "decimal",
        "float4",
        "float8",
        "real",
        "double precision",
        "oid",
        "bool",
        "boolean",
        "date",
        "timestamp",
        "timestamptz",
        "inet",
        "cidr",
        "json",
        "jsonb",
    }
)
_TRUE_WORDS = frozenset({"t", "true", "on", "yes", "y", "1"})
_FALSE_WORDS = frozenset({"f", "false", "off", "no", "n", "0"})
_LIKE_NAMES = {"~~": " (LIKE)", "!~~": " (NOT LIKE)", "~~*": " (ILIKE)", "!~~*": " (NOT ILIKE)"}
_ORDERINGS = frozenset({"<", ">", "<=", ">="})
_BOOLEAN_OPERATORS = frozenset({"~~", "!~~", "~~*", "!~~*", "~", "~*", "!~", "!~*", "@>", "<@", "&&"})
# Functions that keep a tenant id's identity and map '' to '' (so they stay exact).
_SAME_IDENTITY: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "btrim": str.strip,
    "ltrim": str.lstrip,
    "rtrim": str.rstrip,
    "text": str,
}
_ROLE_FUNCTIONS = ("SVFOP_CURRENT_ROLE", "SVFOP_CURRENT_USER", "SVFOP_USER")
_MAX_DEPTH = 8


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Opening:
    """A scenario in which the expression admits rows of other tenants, and what that depends on."""

    scenario: Scenario
    data: tuple[str, ...] = ()  # the row's own data (a flag column) or the session's
    inputs: tuple[str, ...] = ()  # client-settable inputs, e.g. current_setting('app.is_admin')
    functions: tuple[str, ...] = ()  # policy functions whose bodies it passes through

    @property
    def reason(self) -> str:
        """One sentence: when, and through what, rows of other tenants are admitted."""
        text = SCENARIOS[self.scenario] + " it admits rows of other tenants"
        if self.data:
            text += " wherever the data allows it (" + ", ".join(self.data) + ")"
        if self.inputs:
            text += " when the client sets " + ", ".join(self.inputs)
        if self.functions:
            text += " through " + ", ".join(self.functions)
        return text


@dataclass(frozen=True)
class Analysis:
    """The verdict on one expression; ``bound`` when every row it admits belongs to the bound tenant."""

    openings: tuple[Opening, ...] = ()
    client_inputs: tuple[str, ...] = ()  # every client-settable input it reads, opening or not
    unanalysable: str | None = None  # why an opening can be neither proven nor ruled out
    always_true: bool = False  # true for every row of every tenant in every scenario
    reads_setting: bool = False  # reads the tenant setting, itself or through a function
    sealed: bool = False  # reads the tenant only through a trusted seal verifier, never the setting itself
    per_row: bool = False  # reads the tenant setting outside a (SELECT ...): once per row
    empty_setting_fails: bool = False  # with the setting reset to '' a cast raises an error
    empty_tenant_rows: bool = False  # a text tenant column: rows whose tenant is '' are admitted

    @property
    def fail_open(self) -> tuple[Scenario, ...]:
        """The scenarios in which rows of other tenants are admitted."""
        return tuple(dict.fromkeys(o.scenario for o in self.openings))

    @property
    def bound(self) -> bool:
        return not self.openings and self.unanalysable is None

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every opening, unanalysable part and '' hazard, one sentence each."""
        found = [o.reason for o in self.openings]
        if self.unanalysable:
            found.append("cannot analyse: " + self.unanalysable)
        if self.empty_tenant_rows:
            found.append("with the setting reset to '' it admits rows whose tenant is '', if any exist")
        if self.empty_setting_fails:
            found.append("with the setting reset to '' a cast of '' raises an error")
        return tuple(found)


def table_expression(permissive: Sequence[str], restrictive: Sequence[str] = ()) -> str:
    """The rows a command admits: any permissive policy's expression AND every restrictive one's.

    With no permissive expression nothing is admitted, as PostgreSQL does.
    """
    allowed = " OR ".join("(" + e + ")" for e in permissive) or "false"
    return " AND ".join(["(" + allowed + ")", *("(" + e + ")" for e in restrictive)])


def analyse(
    expression: str,
    *,
    setting: str,
    column: str,
    column_type: str = "uuid",
    role: str | None = None,
    resolve: Resolver | None = None,
    sealed: Collection[str] = (),
) -> Analysis:
    """Analyse one policy expression as ``pg_get_expr`` prints it.

    :param setting: the custom setting that carries the tenant id.
    :param column: the table's tenant column.
    :param column_type: its SQL type; a text column can hold ``''``, which a reset setting equals.
    :param role: the app role, the value of ``current_user`` while the policy runs.
    :param resolve: a function's definition by name, to follow the functions the expression calls.
    :param sealed: names of pgtenancy's seal verifiers (``schema.current_tenant``, lower case): a call of
        one is the tenant setting's value when the session's seal verifies, else NULL.
    """
    _require_pglast()
    try:
        tree = _parse_expression(expression)
    except _Unparsable as error:
        return Analysis(unanalysable="PostgreSQL's parser rejects it: " + str(error))
    context = _Context(setting.lower(), column, role, resolve or _no_functions, frozenset(sealed))
    walk = _Walk()
    walk.visit(tree, context, inside_subquery=False, depth=0)
    outcomes = {s: _truth(_Evaluator(context, s, _OTHER).value(tree, _Frame())) for s in SCENARIOS}
    openings: list[Opening] = []
    doubts: dict[str, list[str]] = {}
    for scenario, outcome in outcomes.items():
        notes = outcome.get(True)
        if notes is None:
            continue
        approximations = _notes_of(notes, "approx")
        if approximations:
            doubts.setdefault(", ".join(approximations), []).append(scenario)
        else:
            data, inputs, functions = (_notes_of(notes, k) for k in ("data", "input", "function"))
            openings.append(Opening(scenario, data=data, inputs=inputs, functions=functions))
    empty_tenant_rows = False
    if _type_name(column_type) in _TEXT_TYPES:  # a text column can hold '', which a reset setting equals
        empty = _truth(_Evaluator(context, "empty", "").value(tree, _Frame()))
        empty_tenant_rows = True in empty and not _notes_of(empty[True], "approx")
    return Analysis(
        openings=tuple(openings),
        client_inputs=tuple(dict.fromkeys(walk.inputs)),
        unanalysable="; ".join(
            f"whether it admits rows of other tenants ({', '.join(scenarios)}) depends on {what}"
            for what, scenarios in doubts.items()
        )
        or None,
        always_true=all(set(outcome) == {True} for outcome in outcomes.values()),
        reads_setting=walk.reads_setting,
        sealed=walk.sealed and not walk.reads_raw_setting,
        per_row=walk.per_row,
        empty_setting_fails=_ERROR in outcomes["empty"] and _ERROR not in outcomes["bound"],
        empty_tenant_rows=empty_tenant_rows,
    )


# ----------------------------------------------------------------------------- parsing


class _Unparsable(Exception):
    """The text is not one expression PostgreSQL's parser accepts."""


def _require_pglast() -> None:
    """Import PostgreSQL's parser once, into this module's ``ast`` and ``enums``; name the extra if absent."""
    if "ast" in globals():
        return
    try:
        from pglast import ast, enums
    except ImportError as error:
        raise ConfigurationError(
            "the policy analysis needs PostgreSQL's parser: pip install 'pgtenancy[cli]'"
        ) from error
    globals().update(ast=ast, enums=enums)


@functools.lru_cache(maxsize=4096)
def _parse_expression(expression: str) -> ast.Node:
    """The syntax tree of one expression, parsed as ``SELECT <expression>``."""
    return _single_target("SELECT " + expression)


def _single_target(sql: str) -> ast.Node:
    """The one expression a ``SELECT <expression>`` computes (no FROM, WHERE...)."""
    from pglast import parse_sql, parser

    try:
        statements = parse_sql(sql)
    except parser.ParseError as error:
        raise _Unparsable(str(error)) from error
    value = _target(statements[0].stmt) if len(statements) == 1 else None
    if value is None:
        raise _Unparsable("not a SELECT of one expression")
    return value


def _target(select: ast.Node | None) -> ast.Node | None:
    """The one expression a SELECT computes when it reads no table (no FROM, WHERE, grouping...)."""

    if not isinstance(select, ast.SelectStmt) or not select.targetList or len(select.targetList) != 1:
        return None
    target = select.targetList[0]
    if not isinstance(target, ast.ResTarget) or not isinstance(target.val, ast.Node):
        return None
    return (
        None
        if any(
            (
                select.fromClause,
                select.whereClause,
                select.groupClause,
                select.havingClause,
                select.distinctClause,
                select.valuesLists,
                select.limitCount,
                select.limitOffset,
                select.withClause,
                select.larg,
                select.windowClause,
            )
        )
        else target.val
    )


@dataclass(frozen=True)
class _Function:
    """A followed function: its parameters, whether it is STRICT, and the one expression it returns."""

    name: str
    parameters: tuple[str | None, ...]
    strict: bool
    expression: ast.Node | None
    problem: str | None


@functools.lru_cache(maxsize=1024)
def _parse_function(name: str, definition: str) -> _Function:
    """A SQL or PL/pgSQL function reduced to the expression it returns, or the reason it cannot be."""
    from pglast import parse_plpgsql, parse_sql, parser

    def unanalysable(problem: str) -> _Function:
        return _Function(name, (), False, None, problem)

    try:
        statements = parse_sql(definition)
    except parser.ParseError as error:
        return unanalysable(f"{name}'s definition does not parse: {error}")
    create = statements[0].stmt if len(statements) == 1 else None
    if not isinstance(create, ast.CreateFunctionStmt):
        return unanalysable(f"{name}'s definition is not one CREATE FUNCTION")
    options = {o.defname: o.arg for o in create.options or () if isinstance(o, ast.DefElem)}
    language = options.get("language")
    language_name = language.sval.lower() if isinstance(language, ast.String) and language.sval else "sql"
    strict_option = options.get("strict")
    strict = isinstance(strict_option, ast.Boolean) and bool(strict_option.boolval)
    parameters = tuple(
        p.name
        for p in create.parameters or ()
        if isinstance(p, ast.FunctionParameter) and str(p.mode) not in ("FUNC_PARAM_OUT", "FUNC_PARAM_TABLE")
    )
    source = options.get("as")
    body = source[0].sval if isinstance(source, tuple) and isinstance(source[0], ast.String) else None
    if language_name == "sql":
        if isinstance(create.sql_body, ast.ReturnStmt) and create.sql_body.returnval is not None:
            return _Function(name, parameters, strict, create.sql_body.returnval, None)
        if create.sql_body is not None or body is None:
            return unanalysable(f"{name} has a BEGIN ATOMIC body")
        try:
            return _Function(name, parameters, strict, _single_target(body), None)
        except _Unparsable as error:
            return unanalysable(f"{name}'s body is not one SELECT of an expression ({error})")
    if language_name == "plpgsql":
        try:
            returned = _plpgsql_return(parse_plpgsql(definition))
            return _Function(name, parameters, strict, _single_target("SELECT " + returned), None)
        except (_Unparsable, parser.ParseError) as error:
            return unanalysable(f"{name}'s PL/pgSQL body is not one RETURN <expression> ({error})")
    return unanalysable(f"{name} is written in {language_name}")


def _plpgsql_return(tree: list[dict[str, Any]]) -> str:
    """The expression of a PL/pgSQL body that is exactly ``BEGIN RETURN <expression>; END``."""
    try:
        function = tree[0]["PLpgSQL_function"]
        block = function["action"]["PLpgSQL_stmt_block"]
        statements = block["body"]
    except (KeyError, IndexError, TypeError) as error:
        raise _Unparsable("unexpected PL/pgSQL tree") from error
    if block.get("exceptions") or len(statements) != 1 or "PLpgSQL_stmt_return" not in statements[0]:
        raise _Unparsable("more than one statement")
    expression = statements[0]["PLpgSQL_stmt_return"].get("expr", {}).get("PLpgSQL_expr", {}).get("query")
    if not isinstance(expression, str):
        raise _Unparsable("RETURN without an expression")
    return expression


def _no_functions(name: str) -> str | None:
    return None


def _type_name(sql_type: str) -> str:
    """A type's base name in lower case: ``character varying(36)`` -> ``character varying``."""
    return sql_type.split("(", 1)[0].strip().strip('"').lower().removeprefix("pg_catalog.")


# ----------------------------------------------------------------------------- syntactic walk


@dataclass(frozen=True)
class _Context:
    """What one analysis knows: the setting, the tenant column, the app role and the function resolver."""

    setting: str
    column: str
    role: str | None
    resolve: Resolver
    sealed: frozenset[str] = frozenset()


@dataclass
class _Walk:
    """What an expression and the functions it calls read, whether evaluated or not."""

    reads_setting: bool = False
    reads_raw_setting: bool = False  # current_setting(<tenant setting>) itself, not through a verifier
    sealed: bool = False  # calls a seal verifier
    per_row: bool = False
    inputs: list[str] = field(default_factory=list)
    seen_functions: set[str] = field(default_factory=set)

    def visit(self, node: object, context: _Context, *, inside_subquery: bool, depth: int) -> None:

        if isinstance(node, tuple):
            for item in node:
                self.visit(item, context, inside_subquery=inside_subquery, depth=depth)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SubLink) and node.subLinkType == enums.SubLinkType.EXPR_SUBLINK:
            inside_subquery = True
        if isinstance(node, ast.FuncCall):
            name = _function_name(node)
            input_name = _client_input(node, context)
            if input_name is not None:
                self.inputs.append(input_name)
            elif name[-1] == "current_setting" and _setting_name(node) == context.setting:
                self.reads_setting = self.reads_raw_setting = True
                self.per_row = self.per_row or (depth == 0 and not inside_subquery)
            qualified = ".".join(name)
            if qualified in context.sealed and not node.args:
                self.reads_setting = self.sealed = True
                self.per_row = self.per_row or (depth == 0 and not inside_subquery)
                return
            definition = context.resolve(qualified)
            if definition is not None and qualified not in self.seen_functions and depth < _MAX_DEPTH:
                self.seen_functions.add(qualified)
                function = _parse_function(qualified, definition)
                if function.expression is not None:
                    self.visit(function.expression, context, inside_subquery=True, depth=depth + 1)
        for attribute in node:
            self.visit(getattr(node, attribute), context, inside_subquery=inside_subquery, depth=depth)


def _function_name(call: ast.FuncCall) -> tuple[str, ...]:
    return tuple((part.sval or "").lower() for part in call.funcname or () if hasattr(part, "sval")) or ("",)


def _setting_name(call: ast.FuncCall) -> str | None:
    """The literal name ``current_setting`` reads, lower-cased; None when it is computed."""

    argument = call.args[0] if call.args else None
    while isinstance(argument, ast.TypeCast):
        argument = argument.arg
    if isinstance(argument, ast.A_Const) and isinstance(argument.val, ast.String):
        return (argument.val.sval or "").lower()
    return None


def _client_input(call: ast.FuncCall, context: _Context) -> str | None:
    """How a call that reads a client-settable input is named in findings; None for any other call."""
    name = _function_name(call)
    if name[-1] in CLIENT_FUNCTIONS and name[:-1] in ((), ("pg_catalog",)):
        return name[-1] + "()"
    if name[-1] != "current_setting" or name[:-1] not in ((), ("pg_catalog",)):
        return None
    setting = _setting_name(call)
    if setting is None:
        return "current_setting(<computed name>)"
    if setting == context.setting or setting in _FIXED_SETTINGS:
        return None
    return "current_setting('" + setting + "')"


# ----------------------------------------------------------------------------- abstract values


class _Special(enum.Enum):
    ERROR = "error"  # evaluating it raises: the statement fails and admits nothing
    ANY = "any"  # any value at all, NULL included


class _Token(NamedTuple):
    """A value known by identity alone: another tenant's id, or the bound tenant's."""

    name: str


class _Array(NamedTuple):
    items: tuple[_Atom, ...]


class _Note(NamedTuple):
    """What an outcome depends on: kind is data, input, function, approx, setting or tenant."""

    kind: str
    text: str


_Atom: TypeAlias = "bool | str | _Token | _Array | _Special | None"
_Notes: TypeAlias = frozenset[_Note]
_Value: TypeAlias = Mapping["_Atom", _Notes]
_ERROR = _Special.ERROR
_ANY = _Special.ANY
_OTHER = _Token("other tenant")
_BOUND = _Token("bound tenant")
_NONE: _Notes = frozenset()
_BOOLEANS: tuple[_Atom, ...] = (True, False, None)


def _value(pairs: Iterable[tuple[_Atom, _Notes]]) -> dict[_Atom, _Notes]:
    """Outcomes and their notes; an outcome reached several ways depends only on what all ways share."""
    merged: dict[_Atom, _Notes] = {}
    for atom, notes in pairs:
        merged[atom] = merged[atom] & notes if atom in merged else notes
    return merged


def _const(atom: _Atom, notes: _Notes = _NONE) -> dict[_Atom, _Notes]:
    return {atom: notes}


def _notes_of(notes: _Notes, kind: str) -> tuple[str, ...]:
    return tuple(sorted({n.text for n in notes if n.kind == kind}))


def _tenant_bearing(value: _Value) -> bool:
    """Whether a value derives from the tenant setting or the tenant column."""
    return any(
        isinstance(atom, _Token) or any(n.kind in ("setting", "tenant") for n in notes)
        for atom, notes in value.items()
    )


def _all_notes(*values: _Value) -> _Notes:
    return frozenset().union(*(notes for value in values for notes in value.values()))


def _unknown(what: str, *operands: _Value, approx: bool = False) -> dict[_Atom, _Notes]:
    """Any value: data of the row when no operand derives from the tenant, else an approximation."""
    kind = "approx" if approx or any(_tenant_bearing(v) for v in operands) else "data"
    return _const(_ANY, _all_notes(*operands) | {_Note(kind, what)})


def _predicate(what: str, left: _Value, right: _Value) -> dict[_Atom, _Notes]:
    """A comparison the analysis does not model (LIKE, BETWEEN...): NULL or an error, else either way."""
    notes = _unknown(what, left, right)[_ANY]
    pairs: list[tuple[_Atom, _Notes]] = []
    for a in left:
        for b in right:
            if _ERROR in (a, b) or None in (a, b):
                pairs.append((_ERROR if _ERROR in (a, b) else None, notes))
            else:
                pairs.extend((r, notes) for r in (True, False) + ((None,) if _ANY in (a, b) else ()))
    return _value(pairs)


def _truth(value: _Value) -> dict[_Atom, _Notes]:
    """A value in a boolean context: true, false, NULL or an error."""
    pairs: list[tuple[_Atom, _Notes]] = []
    for atom, notes in value.items():
        if atom is None or isinstance(atom, bool) or atom is _ERROR:
            pairs.append((atom, notes))
        elif isinstance(atom, str) and atom.lower() in _TRUE_WORDS | _FALSE_WORDS:
            pairs.append((atom.lower() in _TRUE_WORDS, notes))
        elif isinstance(atom, str):
            pairs.append((_ERROR, notes))
        else:
            pairs.extend((b, notes) for b in _BOOLEANS)
    return _value(pairs)


def _not(value: _Value) -> dict[_Atom, _Notes]:
    return _value(((not atom if isinstance(atom, bool) else atom), n) for atom, n in _truth(value).items())


def _junction(first: _Value, rest: Callable[[], _Value], *, conjunction: bool) -> dict[_Atom, _Notes]:
    """AND / OR in evaluation order: a decisive or failing left operand stops the right one."""
    decisive = not conjunction  # False decides an AND, True an OR
    pairs: list[tuple[_Atom, _Notes]] = []
    right: dict[_Atom, _Notes] | None = None
    for atom, notes in _truth(first).items():
        if atom is decisive or atom is _ERROR:
            pairs.append((atom, notes))
            continue
        right = _truth(rest()) if right is None else right
        for other, other_notes in right.items():
            if atom is None and other is not decisive and other is not _ERROR:
                other = None
            pairs.append((other, notes | other_notes))
    return _value(pairs)


def _equal(left: _Atom, right: _Atom) -> tuple[_Atom, ...]:
    """The possible outcomes of ``left = right``."""
    if left is _ERROR or right is _ERROR:
        return (_ERROR,)
    if left is None or right is None:
        return (None,)
    if left is _ANY or right is _ANY:
        return _BOOLEANS
    if isinstance(left, _Token) or isinstance(right, _Token):
        if isinstance(left, _Token) and isinstance(right, _Token):
            return (left == right,)
        other = right if isinstance(left, _Token) else left
        return (False,) if other == "" else (True, False)  # another tenant may have that id
    if isinstance(left, _Array) or isinstance(right, _Array):
        return (True, False)
    if isinstance(left, str) and isinstance(right, str):
        return (left == right,)
    return (_as_bool(left) == _as_bool(right),)


def _as_bool(atom: _Atom) -> _Atom:
    if isinstance(atom, str):
        word = atom.lower()
        return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else atom
    return atom


def _compare(operator: str, left: _Value, right: _Value) -> dict[_Atom, _Notes]:
    """``left <operator> right`` for each pair of outcomes; = and <> exactly, orderings of ids too."""
    if operator in ("=", "<>", "!=") or operator in _ORDERINGS:
        pairs: list[tuple[_Atom, _Notes]] = []
        for a, a_notes in left.items():
            for b, b_notes in right.items():
                results = _equal(a, b) if operator not in _ORDERINGS else _order(operator, a, b)
                notes = a_notes | b_notes
                if isinstance(a, _Token) != isinstance(b, _Token) and isinstance(
                    a if isinstance(b, _Token) else b, str
                ):
                    notes |= {_Note("data", "the tenant id " + repr(a if isinstance(b, _Token) else b))}
                for result in results:
                    if operator in ("<>", "!=") and isinstance(result, bool):
                        result = not result
                    pairs.append((result, notes))
        return _value(pairs)
    if operator == "||":
        return _concatenate(left, right)
    if operator in _BOOLEAN_OPERATORS:
        return _predicate("the operator " + operator + _LIKE_NAMES.get(operator, ""), left, right)
    return _unknown("the operator " + operator, left, right)


def _order(operator: str, left: _Atom, right: _Atom) -> tuple[_Atom, ...]:
    """The outcomes of an ordering comparison: exact only for equal values and NULLs."""
    equal = _equal(left, right)
    if equal in ((_ERROR,), (None,)):
        return equal
    if equal == (True,):
        return (operator in ("<=", ">="),)
    return _BOOLEANS if left is _ANY or right is _ANY else (True, False)


def _concatenate(left: _Value, right: _Value) -> dict[_Atom, _Notes]:
    pairs: list[tuple[_Atom, _Notes]] = []
    for a, a_notes in left.items():
        for b, b_notes in right.items():
            notes = a_notes | b_notes
            if a is _ERROR or b is _ERROR or a is None or b is None:
                pairs.append((_ERROR if _ERROR in (a, b) else None, notes))
            elif isinstance(a, str) and isinstance(b, str):
                pairs.append((a + b, notes))
            else:
                pairs.extend(_unknown("a concatenation", {a: a_notes}, {b: b_notes}).items())
    return _value(pairs)


def _cast(value: _Value, type_name: str, array: bool) -> dict[_Atom, _Notes]:
    """A cast: '' fails for uuid, integer and other strict types; ids keep their identity."""
    pairs: list[tuple[_Atom, _Notes]] = []
    for atom, notes in value.items():
        if atom is None or atom is _ERROR or atom is _ANY or isinstance(atom, _Token):
            pairs.append((atom, notes))
        elif isinstance(atom, _Array):
            if array:
                cast = [_cast(_const(item), type_name, False) for item in atom.items]
                if all(len(c) == 1 for c in cast):
                    items = tuple(next(iter(c)) for c in cast)
                    pairs.append((_ERROR if _ERROR in items else _Array(items), notes))
                    continue
            pairs.extend(_unknown("a cast to " + type_name + "[]", {atom: notes}).items())
        elif array:
            pairs.extend(_unknown("a cast to " + type_name + "[]", {atom: notes}).items())
        elif isinstance(atom, bool):
            text = "true" if atom else "false"
            pairs.append((text if type_name in _TEXT_TYPES else atom, notes))
        elif type_name in _TEXT_TYPES:
            pairs.append((atom, notes))
        elif type_name in ("bool", "boolean"):
            pairs.append((_as_bool(atom) if _as_bool(atom) != atom else _ERROR, notes))
        elif type_name in _STRICT_INPUT_TYPES:
            pairs.append((_ERROR if isinstance(atom, str) and atom.strip() == "" else atom, notes))
        else:
            pairs.extend(_unknown("a cast to " + type_name, {atom: notes}).items())
    return _value(pairs)


def _map(value: _Value, change: Callable[[str], _Atom]) -> dict[_Atom, _Notes]:
    """A function that keeps NULL, errors, unknowns and ids as they are and changes literal text."""
    return _value(((change(a) if isinstance(a, str) else a), n) for a, n in value.items())


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Frame:
    """The parameters of the function being evaluated (none at the policy's own level)."""

    parameters: Mapping[str, _Value] = field(default_factory=dict)
    positional: tuple[_Value, ...] = ()
    function: str | None = None
    depth: int = 0


class _Evaluator:
    """Evaluates a syntax tree in one world: one scenario, one row of another tenant."""

    def __init__(self, context: _Context, scenario: Scenario, row: _Atom) -> None:
        self.context = context
        self.scenario = scenario
        self.row = row

    def value(self, node: object, frame: _Frame) -> dict[_Atom, _Notes]:

        handler = _HANDLERS.get(type(node).__name__)
        if handler is not None and isinstance(node, ast.Node):
            return handler(self, node, frame)
        return _unknown("a " + type(node).__name__ + " expression", approx=True)

    # -- leaves

    def column(self, node: ast.ColumnRef, frame: _Frame) -> dict[_Atom, _Notes]:

        fields = [f.sval for f in node.fields or () if isinstance(f, ast.String)]
        name = fields[-1] if fields and len(fields) == len(node.fields or ()) else None
        if frame.function is not None:
            if name is not None and name in frame.parameters and len(fields) <= 2:
                return dict(frame.parameters[name])
            return _unknown("a column read inside " + frame.function, approx=True)
        if name == self.context.column:
            return _const(self.row, frozenset({_Note("tenant", name)}))
        if name is None:
            return _unknown("a whole-row reference", approx=True)
        return _const(_ANY, frozenset({_Note("data", "column " + name)}))

    def parameter(self, node: ast.ParamRef, frame: _Frame) -> dict[_Atom, _Notes]:
        number = node.number or 0
        if 0 < number <= len(frame.positional):
            return dict(frame.positional[number - 1])
        return _unknown("a parameter $" + str(number), approx=True)

    def constant(self, node: ast.A_Const, frame: _Frame) -> dict[_Atom, _Notes]:

        value = node.val
        if node.isnull or value is None:
            return _const(None)
        if isinstance(value, ast.Boolean):
            return _const(bool(value.boolval))
        if isinstance(value, ast.Integer):
            return _const(str(value.ival or 0))
        if isinstance(value, ast.Float):
            return _const(str(value.fval))
        if isinstance(value, ast.String):
            return _const(value.sval or "")
        return _const(str(getattr(value, "bsval", "")))

    def special(self, node: ast.SQLValueFunction, frame: _Frame) -> dict[_Atom, _Notes]:
        if node.op is not None and node.op.name in _ROLE_FUNCTIONS and self.context.role is not None:
            return _const(self.context.role)
        name = node.op.name.removeprefix("SVFOP_").lower() if node.op is not None else "value"
        return _const(_ANY, frozenset({_Note("data", "the session's " + name)}))

    # -- operators

    def boolean(self, node: ast.BoolExpr, frame: _Frame) -> dict[_Atom, _Notes]:

        arguments = list(node.args or ())
        if node.boolop == enums.BoolExprType.NOT_EXPR:
            return _not(self.value(arguments[0], frame))
        conjunction = node.boolop == enums.BoolExprType.AND_EXPR
        result = self.value(arguments[0], frame)
        for argument in arguments[1:]:
            result = _junction(
                result, functools.partial(self.value, argument, frame), conjunction=conjunction
            )
        return result

    def operator(self, node: ast.A_Expr, frame: _Frame) -> dict[_Atom, _Notes]:

        kind = node.kind
        name = node.name[-1].sval if node.name and isinstance(node.name[-1], ast.String) else ""
        operator = name or ""
        if kind == enums.A_Expr_Kind.AEXPR_IN and isinstance(node.rexpr, tuple):
            left = self.value(node.lexpr, frame)
            items = [_compare(operator, left, self.value(item, frame)) for item in node.rexpr]
            return _any_of(items, every=operator != "=")
        if isinstance(node.rexpr, tuple):  # BETWEEN: lexpr BETWEEN bound AND bound
            left = self.value(node.lexpr, frame)
            bounds = [self.value(item, frame) for item in node.rexpr]
            return _any_of([_predicate("BETWEEN", left, b) for b in bounds], every=True)
        right = self.value(node.rexpr, frame)
        if node.lexpr is None:
            return _unknown("the prefix operator " + operator, right)
        left = self.value(node.lexpr, frame)
        if kind == enums.A_Expr_Kind.AEXPR_OP:
            return _compare(operator, left, right)
        if kind in (enums.A_Expr_Kind.AEXPR_OP_ANY, enums.A_Expr_Kind.AEXPR_OP_ALL):
            return self.quantified(operator, left, right, every=kind == enums.A_Expr_Kind.AEXPR_OP_ALL)
        if kind in (enums.A_Expr_Kind.AEXPR_DISTINCT, enums.A_Expr_Kind.AEXPR_NOT_DISTINCT):
            distinct = _distinct(left, right)
            return distinct if kind == enums.A_Expr_Kind.AEXPR_DISTINCT else _not(distinct)
        if kind == enums.A_Expr_Kind.AEXPR_NULLIF:
            return _nullif(left, right)
        kind_name = kind.name.removeprefix("AEXPR_") if kind is not None else "an operator"
        return _predicate(kind_name + " " + operator, left, right)

    def quantified(self, operator: str, left: _Value, right: _Value, *, every: bool) -> dict[_Atom, _Notes]:
        """``left op ANY (array)`` / ``ALL``: one comparison per element, OR-ed or AND-ed."""
        pairs: list[tuple[_Atom, _Notes]] = []
        for atom, notes in right.items():
            if isinstance(atom, _Array):
                items = [_compare(operator, left, _const(item, notes)) for item in atom.items]
                pairs.extend(_any_of(items, every=every).items())
            elif atom is None or atom is _ERROR:
                pairs.append((atom, notes | _all_notes(left)))
            else:
                pairs.extend(_truth(_unknown("a comparison with an array", left, {atom: notes})).items())
        return _value(pairs)

    def array(self, node: ast.A_ArrayExpr, frame: _Frame) -> dict[_Atom, _Notes]:
        elements = [self.value(e, frame) for e in node.elements or ()]
        combinations: list[tuple[tuple[_Atom, ...], _Notes]] = [((), _NONE)]
        for element in elements:
            combinations = [
                ((*items, a), notes | n) for items, notes in combinations for a, n in element.items()
            ]
            if len(combinations) > 64:
                return _unknown("a large array", *elements)
        return _value((_Array(items), notes) for items, notes in combinations)

    def null_test(self, node: ast.NullTest, frame: _Frame) -> dict[_Atom, _Notes]:

        pairs: list[tuple[_Atom, _Notes]] = []
        for atom, notes in self.value(node.arg, frame).items():
            if atom is _ERROR:
                pairs.append((_ERROR, notes))
            elif atom is _ANY:
                pairs.extend(((True, notes), (False, notes)))
            else:
                pairs.append((atom is None, notes))
        result = _value(pairs)
        return result if node.nulltesttype == enums.NullTestType.IS_NULL else _not(result)

    def boolean_test(self, node: ast.BooleanTest, frame: _Frame) -> dict[_Atom, _Notes]:
        test = node.booltesttype.name if node.booltesttype is not None else "IS_TRUE"
        wanted: _Atom = None if "UNKNOWN" in test else "FALSE" not in test
        negated = "_NOT_" in test
        pairs = [
            (a if a is _ERROR else (a is wanted) != negated, n)
            for a, n in _truth(self.value(node.arg, frame)).items()
        ]
        return _value(pairs)

    # -- conditionals

    def case(self, node: ast.CaseExpr, frame: _Frame) -> dict[_Atom, _Notes]:
        subject = self.value(node.arg, frame) if node.arg is not None else None
        whens = list(node.args or ())

        def branch(index: int) -> dict[_Atom, _Notes]:
            if index == len(whens):
                return self.value(node.defresult, frame) if node.defresult is not None else _const(None)
            when = whens[index]
            condition = self.value(when.expr, frame)
            if subject is not None:
                condition = _compare("=", subject, condition)
            pairs: list[tuple[_Atom, _Notes]] = []
            then: dict[_Atom, _Notes] | None = None
            rest: dict[_Atom, _Notes] | None = None
            for atom, notes in _truth(condition).items():
                if atom is _ERROR:
                    pairs.append((_ERROR, notes))
                elif atom is True:
                    then = self.value(when.result, frame) if then is None else then
                    pairs.extend((a, notes | n) for a, n in then.items())
                else:
                    rest = branch(index + 1) if rest is None else rest
                    pairs.extend((a, notes | n) for a, n in rest.items())
            return _value(pairs)

        return branch(0)

    def coalesce(self, node: ast.CoalesceExpr, frame: _Frame) -> dict[_Atom, _Notes]:
        arguments = list(node.args or ())

        def first(index: int, carried: _Notes) -> dict[_Atom, _Notes]:
            if index == len(arguments):
                return _const(None, carried)
            pairs: list[tuple[_Atom, _Notes]] = []
            for atom, notes in self.value(arguments[index], frame).items():
                if atom is not None:
                    pairs.append((atom, carried | notes))
                if atom is None or atom is _ANY:
                    pairs.extend(first(index + 1, carried | notes).items())
            return _value(pairs)

        return first(0, _NONE)

    def sublink(self, node: ast.SubLink, frame: _Frame) -> dict[_Atom, _Notes]:

        target = _target(node.subselect)
        if node.subLinkType == enums.SubLinkType.EXPR_SUBLINK and target is not None:
            return self.value(target, frame)
        walk = _Walk()
        walk.visit(node, self.context, inside_subquery=True, depth=frame.depth)
        inputs = frozenset(_Note("input", i) for i in walk.inputs)
        return _const(_ANY, inputs | {_Note("approx", "a subquery")})

    def cast(self, node: ast.TypeCast, frame: _Frame) -> dict[_Atom, _Notes]:

        type_name = node.typeName
        names = [
            n.sval or "" for n in (type_name.names if type_name else ()) or () if isinstance(n, ast.String)
        ]
        name = _type_name(names[-1] if names else "")
        array = bool(type_name and type_name.arrayBounds)
        return _cast(self.value(node.arg, frame), name, array)

    # -- functions

    def call(self, node: ast.FuncCall, frame: _Frame) -> dict[_Atom, _Notes]:
        name = _function_name(node)
        arguments = [self.value(a, frame) for a in node.args or ()]
        builtin = name[:-1] in ((), ("pg_catalog",))
        if builtin and name[-1] == "current_setting":
            return self.setting(node, arguments)
        if builtin and name[-1] in CLIENT_FUNCTIONS:
            return _const(_ANY, frozenset({_Note("input", name[-1] + "()")}))
        qualified = ".".join(name)
        if qualified in self.context.sealed and not arguments:
            return self.sealed_tenant()
        definition = self.context.resolve(qualified)
        if definition is not None:
            return self.follow(_parse_function(qualified, definition), arguments, frame)
        if builtin and name[-1] in _SAME_IDENTITY and len(arguments) == 1:
            return _map(arguments[0], _SAME_IDENTITY[name[-1]])
        if builtin and name[-1] == "string_to_array" and len(arguments) == 2:
            return _split(arguments[0], arguments[1])
        if builtin:
            return _unknown(qualified + "()", *arguments)
        return _unknown("the function " + qualified + ", which could not be read", *arguments, approx=True)

    def setting(self, node: ast.FuncCall, arguments: list[dict[_Atom, _Notes]]) -> dict[_Atom, _Notes]:
        """``current_setting``: the tenant setting in this scenario; any other setting is a client input."""
        input_name = _client_input(node, self.context)
        if input_name is not None:
            return _const(_ANY, frozenset({_Note("input", input_name)}))
        if _setting_name(node) != self.context.setting:
            return _const(_ANY, frozenset({_Note("data", "a server setting")}))
        note = frozenset({_Note("setting", self.context.setting)})
        if self.scenario == "empty":
            return _const("", note)
        if self.scenario == "bound":
            return _const(_BOUND, note)
        missing_ok = _truth(arguments[1]) if len(arguments) > 1 else {False: _NONE}
        return _value(((None if atom is True else _ERROR), note) for atom in missing_ok)

    def sealed_tenant(self) -> dict[_Atom, _Notes]:
        """A seal verifier: NULL with no tenant or '' (and without a valid seal), else the bound tenant."""
        note = frozenset({_Note("setting", self.context.setting)})
        if self.scenario == "bound":
            return _value(((_BOUND, note), (None, note)))
        return _const(None, note)

    def follow(
        self, function: _Function, arguments: list[dict[_Atom, _Notes]], frame: _Frame
    ) -> dict[_Atom, _Notes]:
        """A call of a function whose definition was read: its returned expression, arguments substituted."""
        note = _Note("function", function.name + "()")
        if function.expression is None or frame.depth >= _MAX_DEPTH:
            problem = function.problem or f"{function.name} calls functions too deeply"
            return _const(_ANY, _all_notes(*arguments) | {note, _Note("approx", problem)})
        if function.strict:
            if any(set(a) == {None} for a in arguments):
                return _const(None, _all_notes(*arguments) | {note})
            arguments = [_value((x, n) for x, n in a.items() if x is not None) for a in arguments]
        inner = _Frame(
            parameters={p: a for p, a in zip(function.parameters, arguments, strict=False) if p},
            positional=tuple(arguments),
            function=function.name,
            depth=frame.depth + 1,
        )
        result = self.value(function.expression, inner)
        pairs = [(a, n | {note}) for a, n in result.items()]
        if function.strict and any(None in a for a in arguments):
            pairs.append((None, frozenset({note})))
        return _value(pairs)


def _any_of(items: Sequence[_Value], *, every: bool) -> dict[_Atom, _Notes]:
    """OR (or, with ``every``, AND) of comparisons that are all evaluated: ``IN``, ``= ANY(array)``."""
    if not items:
        return _const(every)
    result: dict[_Atom, _Notes] = dict(items[0])
    for item in items[1:]:
        result = _junction(result, functools.partial(dict, item), conjunction=every)
    return result


def _distinct(left: _Value, right: _Value) -> dict[_Atom, _Notes]:
    pairs: list[tuple[_Atom, _Notes]] = []
    for a, a_notes in left.items():
        for b, b_notes in right.items():
            notes = a_notes | b_notes
            if a is _ERROR or b is _ERROR:
                pairs.append((_ERROR, notes))
            elif a is None or b is None:
                others = (b,) if a is None else (a,)
                for other in others:
                    pairs.extend(
                        (o, notes) for o in ((True, False) if other is _ANY else (other is not None,))
                    )
            else:
                pairs.extend((not r if isinstance(r, bool) else False, notes) for r in _equal(a, b))
    return _value(pairs)


def _nullif(left: _Value, right: _Value) -> dict[_Atom, _Notes]:
    pairs: list[tuple[_Atom, _Notes]] = []
    for a, a_notes in left.items():
        for b, b_notes in right.items():
            for equal in _equal(a, b):
                notes = a_notes | b_notes
                pairs.append((_ERROR if equal is _ERROR else None if equal is True else a, notes))
    return _value(pairs)


def _split(text: _Value, separator: _Value) -> dict[_Atom, _Notes]:
    """``string_to_array(text, separator)``: a bound tenant's id stays one element, '' none."""
    pairs: list[tuple[_Atom, _Notes]] = []
    for atom, notes in text.items():
        for sep, sep_notes in separator.items():
            both = notes | sep_notes
            if atom is None or atom is _ERROR:
                pairs.append((atom, both))
            elif isinstance(atom, _Token):
                pairs.append((_Array((atom,)), both))
            elif isinstance(atom, str) and isinstance(sep, str):
                pairs.append((_Array(tuple(atom.split(sep)) if atom else ()), both))
            else:
                pairs.extend(_unknown("string_to_array()", {atom: notes}, {sep: sep_notes}).items())
    return _value(pairs)


_Handler: TypeAlias = Callable[[_Evaluator, Any, _Frame], dict[_Atom, _Notes]]
_HANDLERS: dict[str, _Handler] = {
    "A_ArrayExpr": _Evaluator.array,
    "A_Const": _Evaluator.constant,
    "A_Expr": _Evaluator.operator,
    "BoolExpr": _Evaluator.boolean,
    "BooleanTest": _Evaluator.boolean_test,
    "CaseExpr": _Evaluator.case,
    "CoalesceExpr": _Evaluator.coalesce,
    "ColumnRef": _Evaluator.column,
    "FuncCall": _Evaluator.call,
    "NullTest": _Evaluator.null_test,
    "ParamRef": _Evaluator.parameter,
    "SQLValueFunction": _Evaluator.special,
    "SubLink": _Evaluator.sublink,
    "TypeCast": _Evaluator.cast,
}
