"""Valid rows for the probes: a value for every required column, parent rows for every foreign key.

A probe that cannot insert a row proves nothing, so the rows are built from the catalog: enums take a
label, domains their base type, ranges and arrays a value of their own shape, generated and identity
columns are left to PostgreSQL. A CHECK constraint or a type's input routine that refuses a value
makes the builder try the column's next candidate. A foreign key whose columns are all required gets
its parent row inserted first (recursively, with the tenant passed down composite keys), inside the
caller's transaction, which the probes roll back.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection

from pgtenancy.audit.attempts import Attempts, Failure, insert, qualified, quote
from pgtenancy.catalog.inserts import COLUMNS, CONSTRAINTS, TABLES, TYPES

__all__ = ["Blueprints", "Plan", "RowBuilder", "Unbuildable"]

_RETRIED = {"23514", "23505", "23P01", "22001", "22003", "22007", "22008", "22P02", "22023", "22000"}
_ATTEMPTS = 24
_MAX_DEPTH = 4

Candidate = Callable[[], str]


class Unbuildable(Exception):
    """No valid row could be built; the message says which table, column or constraint stood in the way."""


@dataclass(frozen=True)
class _Type:
    name: str
    kind: str  # pg_type.typtype: b base, d domain, e enum, r range, m multirange, c composite, p pseudo
    category: str
    element: int
    base: int
    subtype: int  # a range's element type, or a multirange's range type
    labels: tuple[str, ...]
    fields: int


@dataclass(frozen=True)
class _Column:
    name: str
    type: int
    required: bool  # NOT NULL without a default of its own or of its domain, not identity, not generated
    generated: bool


@dataclass(frozen=True)
class _ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: int
    parent_columns: tuple[str, ...]


@dataclass
class _Table:
    oid: int
    schema: str
    name: str
    columns: list[_Column] = field(default_factory=list)
    foreign_keys: list[_ForeignKey] = field(default_factory=list)
    checks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.schema + "." + self.name


class Blueprints:
    """What it takes to insert into each user table, read from the catalog in four queries."""

    def __init__(self, conn: Connection) -> None:
        self._types = {
            row[0]: _Type(row[1], row[2], row[3], row[4], row[5], row[6], tuple(row[7]), row[8])
            for row in conn.execute(TYPES)
        }
        self._tables = {oid: _Table(oid, schema, name) for oid, schema, name in conn.execute(TABLES)}
        for oid, name, type_oid, required, generated in conn.execute(COLUMNS):
            self._tables[oid].columns.append(_Column(name, type_oid, required, generated))
        self._domain_checks: dict[str, set[int]] = {}
        for kind, relation, domain, name, parent, columns, parent_columns in conn.execute(CONSTRAINTS):
            owner = self._tables.get(relation)
            if kind == "c" and domain:
                self._domain_checks.setdefault(name, set()).add(domain)
            elif kind == "c" and owner is not None:
                owner.checks[name] = tuple(columns)
            elif kind == "f" and owner is not None:
                owner.foreign_keys.append(_ForeignKey(name, tuple(columns), parent, tuple(parent_columns)))

    def table(self, oid: int) -> _Table:
        found = self._tables.get(oid)
        if found is None:
            raise Unbuildable(f"table {oid} is not a user table pgtenancy can insert into")
        return found

    def candidates(self, type_oid: int, depth: int = 0) -> list[Candidate]:
        """Values to try for a column of this type, most likely to pass first ([] when none is known)."""
        kind = self._types.get(type_oid)
        if kind is None or depth > _MAX_DEPTH:
            return []
        if kind.kind == "d":
            return self.candidates(kind.base, depth + 1)
        if kind.kind == "e":
            return [_fixed(label) for label in kind.labels[:6]]
        if kind.kind == "r":
            return [*(_fixed(r) for r in _ranges(self._types.get(kind.subtype))), _fixed("empty")]
        if kind.kind == "m":
            inner = self._types.get(kind.subtype)
            element = self._types.get(inner.subtype) if inner is not None else None
            return [*(_fixed("{" + r + "}") for r in _ranges(element)), _fixed("{}")]
        if kind.kind == "c":
            return [_fixed("(" + "," * max(kind.fields - 1, 0) + ")")]
        if kind.category == "A" and kind.element:
            return [_fixed("{}"), *(_array_of(c) for c in self.candidates(kind.element, depth + 1)[:3])]
        return _base_candidates(kind)

    def has_column(self, oid: int, name: str) -> bool:
        """Whether user table ``oid`` has a column ``name``."""
        found = self._tables.get(oid)
        return found is not None and any(c.name == name for c in found.columns)

    def type_name(self, type_oid: int) -> str:
        """The type as SQL names it (its oid when unknown)."""
        kind = self._types.get(type_oid)
        return kind.name if kind is not None else str(type_oid)

    def domain_columns(self, table: _Table, constraint: str) -> tuple[str, ...]:
        """The columns of ``table`` whose (domain) type carries the CHECK constraint ``constraint``."""
        domains = self._domain_checks.get(constraint, set())
        return tuple(c.name for c in table.columns if self._domain_chain(c.type) & domains)

    def _domain_chain(self, type_oid: int) -> set[int]:
        chain: set[int] = set()
        kind = self._types.get(type_oid)
        while kind is not None and kind.kind == "d" and type_oid not in chain:
            chain.add(type_oid)
            type_oid = kind.base
            kind = self._types.get(type_oid)
        return chain


def _fixed(value: str) -> Candidate:
    return lambda: value


def _array_of(element: Candidate) -> Candidate:
    def render() -> str:
        value = element().replace("\\", "\\\\").replace('"', '\\"')
        return '{"' + value + '"}'

    return render


def _random_text() -> str:
    return "p" + secrets.token_hex(4)


def _random_number() -> str:
    return str(1000 + secrets.randbelow(30000))


_BY_NAME: dict[str, list[Candidate]] = {
    "uuid": [lambda: str(uuid.uuid4())],
    "json": [_fixed("{}"), _fixed("[]"), _fixed("0")],
    "jsonb": [_fixed("{}"), _fixed("[]"), _fixed("0")],
    "bytea": [lambda: "\\x" + secrets.token_hex(4)],
    "inet": [_fixed("10.0.0.1")],
    "cidr": [_fixed("10.0.0.0/8")],
    "macaddr": [_fixed("08:00:2b:01:02:03")],
    "macaddr8": [_fixed("08:00:2b:01:02:03:04:05")],
    "interval": [_fixed("1 day"), _fixed("0")],
    "money": [_fixed("1"), _fixed("0")],
    "xml": [_fixed("<probe/>")],
    "tsvector": [_fixed("probe")],
    "tsquery": [_fixed("probe")],
    "point": [_fixed("(0,0)")],
    "box": [_fixed("((0,0),(1,1))")],
    "lseg": [_fixed("[(0,0),(1,1)]")],
    "line": [_fixed("{1,-1,0}")],
    "path": [_fixed("((0,0),(1,1))")],
    "polygon": [_fixed("((0,0),(1,1),(1,0))")],
    "circle": [_fixed("<(0,0),1>")],
    "oid": [_fixed("1")],
    "time without time zone": [_fixed("12:00")],
    "time with time zone": [_fixed("12:00+00")],
    "smallint": [_random_number, _fixed("1"), _fixed("0"), _fixed("-1")],
}
_BY_CATEGORY: dict[str, list[Candidate]] = {
    "S": [_random_text, _fixed("a"), _fixed("x"), _fixed("")],
    "N": [_random_number, _fixed("1"), _fixed("0"), _fixed("5"), _fixed("-1"), _fixed("0.5")],
    "B": [_fixed("false"), _fixed("true")],
    "D": [_fixed("2000-01-01"), _fixed("now"), _fixed("2100-01-01")],
    "V": [_fixed("1"), _fixed("0")],
}


def _base_candidates(kind: _Type) -> list[Candidate]:
    return list(_BY_NAME.get(kind.name) or _BY_CATEGORY.get(kind.category) or [])


def _ranges(element: _Type | None) -> list[str]:
    """Non-empty range literals for ranges of ``element``."""
    if element is None:
        return []
    if element.category == "N":
        return ["[1,10)", "[0,1000000)"]
    if element.name == "date":
        return ["[2000-01-01,2000-01-02)", "[2000-01-01,2100-01-01)"]
    if element.category == "D":
        return ["[2000-01-01 00:00,2000-01-02 00:00)", "[2000-01-01 00:00,2100-01-01 00:00)"]
    return []


@dataclass(frozen=True)
class Plan:
    """How to write a row of one table for one tenant: fixed values (tenant, parent keys) and the
    candidate chosen for each other required column (random ones draw afresh on every render)."""

    table: str  # schema.name, for messages
    fixed: Mapping[str, str]
    chosen: Mapping[str, Candidate]

    def render(self) -> dict[str, str]:
        """The column values of one row: the fixed ones and a fresh draw of each chosen candidate."""
        return {**self.fixed, **{name: make() for name, make in self.chosen.items()}}


class RowBuilder:
    """Plans rows of a table for a tenant, inserting the parent rows they need on ``conn``.

    Inserts run as the connection's current role, under its bound tenant, in savepoints: a refused
    attempt leaves the caller's transaction usable.
    """

    def __init__(
        self, attempts: Attempts, blueprints: Blueprints, tenant_column: Callable[[int], str | None]
    ):
        self._attempts = attempts
        self._blueprints = blueprints
        self._tenant_column = tenant_column

    def plan(self, oid: int, tenant: str, *, trial: bool = True) -> Plan:
        """A plan for a row of table ``oid`` owned by ``tenant``; parents are inserted now.

        :param trial: prove the plan by inserting a row in a savepoint that is rolled back, trying
            other candidates where a CHECK constraint or a type refuses one.
        """
        return self._plan(oid, tenant, {}, trial=trial, depth=0)

    def sketch(self, oid: int, tenant: str) -> Plan:
        """A row of table ``oid`` for ``tenant`` with no parent rows and no trial: foreign key columns get
        values of their type, so the insert may break a key (after the policies had their say)."""
        return self._plan(oid, tenant, {}, trial=False, depth=0, parents=False)

    def _plan(
        self, oid: int, tenant: str, given: dict[str, str], *, trial: bool, depth: int, parents: bool = True
    ) -> Plan:
        if depth > _MAX_DEPTH:
            raise Unbuildable("foreign keys nest too deep (or in a cycle) to build parent rows")
        table_ = self._blueprints.table(oid)
        fixed = dict(given)
        tenant_column = self._tenant_column(oid)
        if tenant_column is not None:
            fixed.setdefault(tenant_column, tenant)
        required = {c.name for c in table_.columns if c.required}
        for key in table_.foreign_keys if parents else ():
            if not set(key.columns) <= required | set(fixed):
                continue  # a NULL in a column of the key: MATCH SIMPLE does not check it
            if set(key.columns) <= set(fixed) and key.parent == oid:
                continue
            handed = {p: fixed[c] for c, p in zip(key.columns, key.parent_columns, strict=True) if c in fixed}
            parent = self._plan(key.parent, tenant, handed, trial=True, depth=depth + 1)
            written = self._insert_returning(key.parent, parent, key.parent_columns)
            for child, parent_column in zip(key.columns, key.parent_columns, strict=True):
                fixed[child] = written[parent_column]
        options: dict[str, list[Candidate]] = {}
        for col in table_.columns:
            if col.required and col.name not in fixed:
                found = self._blueprints.candidates(col.type)
                if not found:
                    raise Unbuildable(
                        f"no value is known for column {col.name} of type "
                        f"{self._blueprints.type_name(col.type)} in {table_.display}"
                    )
                options[col.name] = [*found, self._existing(table_, col.name, found[0])]
        choice = dict.fromkeys(options, 0)
        plan = Plan(table_.display, fixed, {name: options[name][0] for name in options})
        if not trial:
            return plan
        for _ in range(_ATTEMPTS):
            failure = self._try(table_, plan)
            if failure is None:
                return plan
            if failure.sqlstate not in _RETRIED or not self._advance(
                table_, options, choice, failure.constraint
            ):
                raise Unbuildable(f"a row of {table_.display} is refused: {failure.message}")
            plan = Plan(table_.display, fixed, {name: options[name][choice[name]] for name in options})
        raise Unbuildable(f"no combination of values passes the constraints of {table_.display}")

    def _existing(self, table_: _Table, name: str, otherwise: Candidate) -> Candidate:
        """The last resort for a column whose CHECK (or domain) no made-up value passes: a value an
        existing row holds (read once, as the connection's role sees the table)."""
        found: list[str | None] = []

        def existing() -> str:
            if not found:
                name_sql, table_sql = quote(name), qualified(table_.schema, table_.name)
                read = " ".join(
                    (
                        "SELECT CAST(" + name_sql,
                        "AS text) FROM",
                        table_sql,
                        "WHERE",
                        name_sql,
                        "IS NOT NULL LIMIT 1",
                    )
                )
                rows = self._attempts.rows(read)
                found.append(rows[0][0] if isinstance(rows, list) and rows else None)
            return found[0] if found[0] is not None else otherwise()

        return existing

    def _advance(
        self, table_: _Table, options: dict[str, list[Candidate]], choice: dict[str, int], constraint: str
    ) -> bool:
        """Move to the next candidate of a column the failed constraint reads (or of any column)."""
        named = table_.checks.get(constraint, ()) + self._blueprints.domain_columns(table_, constraint)
        columns = [c for c in named if c in options] or list(options)
        for name in columns:  # an odometer over the columns concerned
            if choice[name] + 1 < len(options[name]):
                choice[name] += 1
                return True
            choice[name] = 0
        return False

    def _try(self, table_: _Table, plan: Plan) -> Failure | None:
        """Insert one row of ``plan`` in a savepoint rolled back: None, or why PostgreSQL refused it."""
        outcome = self._attempts.rows(_insert(table_, plan.render()))
        return outcome if isinstance(outcome, Failure) else None

    def _insert_returning(self, oid: int, plan: Plan, columns: tuple[str, ...]) -> dict[str, str]:
        """Insert a row of ``plan`` (kept in the caller's transaction) and return ``columns`` as text."""
        table_ = self._blueprints.table(oid)
        returned = ", ".join("CAST(" + quote(name) + " AS text)" for name in columns)
        outcome = self._attempts.rows(_insert(table_, plan.render()) + " RETURNING " + returned, keep=True)
        if isinstance(outcome, Failure):
            raise Unbuildable(f"cannot insert a parent row into {table_.display}: {outcome.message}")
        if not isinstance(outcome, list) or len(outcome) != 1:
            raise Unbuildable(f"inserting a parent row into {table_.display} returned no row")
        return dict(zip(columns, outcome[0], strict=True))


def _insert(table_: _Table, values: Mapping[str, str]) -> str:
    """INSERT of one row of ``table_`` with these values, as literals of no declared type."""
    return insert(qualified(table_.schema, table_.name), values)
