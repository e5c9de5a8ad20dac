"""Dynamic probes: as the app role, try to cross tenants on real rows, inside transactions rolled back."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    String,
    column,
    delete,
    func,
    insert,
    literal,
    select,
    table,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ColumnElement, TableClause
from sqlalchemy.sql.functions import Function
from sqlalchemy.types import TypeEngine, UserDefinedType

from pgtenancy.audit.findings import Finding, Rule
from pgtenancy.audit.snapshot import Column, Relation, Snapshot
from pgtenancy.drivers import set_local_renderer

__all__ = ["PROBE_RULES", "Leak", "Target", "probe_table", "run_probes"]

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_preparer = _DIALECT.identifier_preparer
_TIMEOUTS = {"statement_timeout": "5s", "lock_timeout": "1s"}
_FILLERS = {"S": "pgtenancy-probe", "N": "0", "B": "false", "D": "now", "A": "{}"}
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"}

PROBE_RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "PGT100",
            "info",
            "Probe not run",
            "A probe could not run; the static rules still apply.",
            "Audit as a superuser (or a member of the app role) so the probes can SET ROLE to the app role.",
        ),
        Rule(
            "PGT101",
            "error",
            "Reads another tenant's rows",
            "With one tenant bound, the app role read rows of another tenant.",
            "Fix the table's policies (see the static findings): one tenant predicate, no fail-open branch.",
        ),
        Rule(
            "PGT102",
            "error",
            "Inserts rows for another tenant",
            "With one tenant bound, the app role inserted a row belonging to another tenant.",
            "Give every write policy WITH CHECK (<tenant predicate>).",
        ),
        Rule(
            "PGT103",
            "error",
            "Updates across tenants",
            "With one tenant bound, the app role updated another tenant's row or moved its own row to "
            "another tenant.",
            "USING and WITH CHECK (<tenant predicate>) on every UPDATE/ALL policy.",
        ),
        Rule(
            "PGT104",
            "error",
            "Deletes another tenant's rows",
            "With one tenant bound, the app role deleted another tenant's row.",
            "USING (<tenant predicate>) on every DELETE/ALL policy.",
        ),
        Rule(
            "PGT105",
            "error",
            "TRUNCATE by the app role",
            "TRUNCATE ignores row-level security and removed every tenant's rows.",
            "REVOKE TRUNCATE ON t FROM app;",
        ),
        Rule(
            "PGT106",
            "error",
            "Rows reachable with no tenant bound",
            "With no tenant bound (the setting unset or ''), the app role read or wrote rows: it fails open.",
            "Compare with NULLIF(current_setting(..., true), '') so a missing tenant matches nothing.",
        ),
        Rule(
            "PGT107",
            "error",
            "View or function reads across tenants",
            "With a tenant bound that owns no rows, a view or function still returned rows.",
            "ALTER VIEW v SET (security_invoker = true); or make the function SECURITY INVOKER.",
        ),
    )
}


class _Untyped(UserDefinedType[str]):
    """A text value sent without a type: PostgreSQL gives it the type of the column it meets."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "unknown"

    def literal_processor(self, dialect: Any) -> Any:
        string: TypeEngine[str] = String()
        return string.literal_processor(dialect)


def _value(value: str) -> ColumnElement[str]:
    return literal(value, _Untyped())


@dataclass(frozen=True)
class Target:
    """A tenant table to probe: its table clause, tenant column, and values that make a valid row."""

    display: str
    table: TableClause
    tenant_column: Column
    fillers: tuple[tuple[str, str], ...]  # (column, value) for NOT NULL columns without a default

    @classmethod
    def of(cls, relation: Relation) -> Target | None:
        """The target for ``relation``, or None when pgtenancy cannot build a row or tenant id for it."""
        tenant = relation.column(relation.tenant_column or "")
        if tenant is None or _fresh_value(tenant) is None:
            return None
        fillers = []
        for other in relation.columns:
            if other.required and other.name != tenant.name:
                value = _filler(other)
                if value is None:
                    return None
                fillers.append((other.name, value))
        clause = table(
            relation.name, column(tenant.name), *(column(name) for name, _ in fillers), schema=relation.schema
        )
        return cls(relation.qualified, clause, tenant, tuple(fillers))

    @property
    def tenant(self) -> ColumnElement[Any]:
        return self.table.c[self.tenant_column.name]

    def fresh_tenant(self) -> str:
        """A tenant id of the column's type, random enough to own no rows."""
        return _fresh_value(self.tenant_column) or ""

    def insert(self, tenant: str) -> Executable:
        """INSERT of one valid row of ``tenant``."""
        values = {self.tenant_column.name: _value(tenant), **{name: _value(v) for name, v in self.fillers}}
        return insert(self.table).values(values)

    def select_all(self) -> Executable:
        return select(text("*")).select_from(self.table).limit(5)

    def select_other_than(self, tenant: str) -> Executable:
        return (
            select(text("*"))
            .select_from(self.table)
            .where(self.tenant.is_distinct_from(_value(tenant)))
            .limit(5)
        )

    def find(self, tenant: str) -> Executable:
        """(tableoid, ctid) of one row of ``tenant``."""
        located = select(column("tableoid").cast(String), column("ctid").cast(String)).select_from(self.table)
        return located.where(self.tenant == _value(tenant)).limit(1)

    def touch(self, where: ColumnElement[bool] | None = None) -> Executable:
        """UPDATE that rewrites the tenant column with itself: it changes nothing but needs UPDATE rights."""
        statement = update(self.table).values({self.tenant_column.name: self.tenant})
        return statement if where is None else statement.where(where)

    def move_to(self, tenant: str) -> Executable:
        return update(self.table).values({self.tenant_column.name: _value(tenant)})

    def delete(self, where: ColumnElement[bool] | None = None) -> Executable:
        statement = delete(self.table)
        return statement if where is None else statement.where(where)

    def truncate(self) -> Executable:
        return text("TRUNCATE " + _preparer.format_table(self.table))

    def row(self, tableoid: str, ctid: str, tenant: str) -> ColumnElement[bool]:
        """The condition that picks ``tenant``'s row by its physical address.

        The tenant pins the shard on Citus, where each shard has its own ctids and ``tableoid`` names
        the distributed table: an address alone would also match the bound tenant's own row.
        """
        return (
            (column("tableoid") == _value(tableoid))
            & (column("ctid") == _value(ctid))
            & self.of_tenant(tenant)
        )

    def of_tenant(self, tenant: str) -> ColumnElement[bool]:
        return self.tenant == _value(tenant)


def _fresh_value(column: Column) -> str | None:
    """A tenant id of ``column``'s type, random enough not to be a real tenant."""
    if column.type == "uuid":
        return str(uuid.uuid4())
    if column.type == "smallint":
        return str(20000 + secrets.randbelow(10000))
    if column.category == "N":
        return str(10**12 + secrets.randbelow(10**12))
    if column.category == "S":
        return "pgt-probe-" + secrets.token_hex(6)
    return None


def _filler(column: Column) -> str | None:
    """A value (sent untyped) that a NOT NULL column of this type accepts."""
    if column.type == "uuid":
        return str(uuid.uuid4())
    if column.type in ("json", "jsonb"):
        return "{}"
    return _FILLERS.get(column.category)


@dataclass(frozen=True)
class Leak:
    """A probe that crossed tenants: which rule it proves, a sentence, and SQL that reproduces it."""

    rule: str
    message: str
    reproduction: str


@dataclass
class _Session:
    """One probing transaction: switches between the auditing role and the app role, binds tenants."""

    conn: Connection
    setting: str
    app_role: str | None  # None: the connection already is the app role
    set_local: bool = (
        False  # bind with SET LOCAL, which Citus forwards to its workers (set_config it does not)
    )
    bound: str | None = None
    leaks: list[Leak] = field(default_factory=list)

    def as_app(self) -> None:
        if self.app_role is not None:
            self.conn.exec_driver_sql("SET LOCAL ROLE " + _preparer.quote(self.app_role))

    def as_auditor(self) -> None:
        if self.app_role is not None:
            self.conn.exec_driver_sql("SET LOCAL ROLE NONE")

    def bind(self, tenant: str) -> None:
        if self.set_local:
            self.conn.exec_driver_sql(set_local_renderer(_DIALECT, self.setting)(tenant))
        else:
            self.conn.execute(select(func.set_config(self.setting, tenant, True)))
        self.bound = tenant

    def attempt(self, statement: Executable) -> int | None:
        """Run ``statement`` in a savepoint, always rolled back: rows returned or touched, None if refused."""
        nested = self.conn.begin_nested()
        try:
            result = self.conn.execute(statement)
            if result.returns_rows:
                count: int | None = len(result.all())
            else:  # a utility statement such as TRUNCATE reports -1: it succeeded
                count = result.rowcount if result.rowcount >= 0 else 1
        except DBAPIError:
            count = None
        nested.rollback()
        return count

    def crossed(
        self, rule: str, message: str, statement: Executable, shown: Executable | None = None
    ) -> None:
        """Record a leak when ``statement`` returns or touches a row (``shown``: a readable equivalent)."""
        if (self.attempt(statement) or 0) > 0:
            self.leaks.append(
                Leak(rule, message, self.reproduction(shown if shown is not None else statement))
            )

    def reproduction(self, statement: Executable) -> str:
        lines = ["BEGIN;"]
        if self.app_role is not None:
            lines.append("SET LOCAL ROLE " + _preparer.quote(self.app_role) + ";")
        if self.bound is not None and self.set_local:
            lines.append(set_local_renderer(_DIALECT, self.setting)(self.bound) + ";")
        elif self.bound is not None:
            lines.append(
                _render(select(func.set_config(_value(self.setting), _value(self.bound), True))) + ";"
            )
        lines += [_render(statement) + ";", "ROLLBACK;"]
        return "\n".join(lines)


def _render(statement: Executable) -> str:
    """``statement`` with its values inlined as quoted literals, on one line, for display only."""
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True})  # type: ignore[attr-defined]
    return " ".join(str(compiled).split())


def probe_table(
    conn: Connection,
    target: Target,
    *,
    setting: str,
    app_role: str | None,
    auditor_bypasses: bool,
    tenants: Sequence[str] = (),
    truncate: bool = False,
    set_local: bool = False,
) -> list[Leak]:
    """Try to cross tenants on ``target`` in one transaction that is rolled back; return what crossed.

    :param app_role: the role to ``SET LOCAL ROLE`` to for the probes; None when ``conn`` is that role.
    :param auditor_bypasses: the connection's own role reads every row (superuser or BYPASSRLS), so
        real tenants are picked and probe rows inserted without binding a tenant.
    :param tenants: tenant ids to probe (two real ones, or fresh ones, are picked when empty).
    :param set_local: bind tenants with ``SET LOCAL`` (Citus: ``set_config`` stays on the coordinator).
    """
    session = _Session(conn, setting, app_role, set_local)
    with conn.begin() as transaction:
        try:
            for name, value in _TIMEOUTS.items():
                conn.execute(select(func.set_config(name, value, True)))
            unset = conn.execute(select(func.current_setting(setting, True).is_(None))).scalar_one()
            chosen = list(tenants) or _pick_tenants(session, target, auditor_bypasses)
            # Citus refuses a role to touch shard placements another role modified in the transaction,
            # so there every probe row is written by the app role, under its own tenant.
            rows = (
                {t: _row_of(session, target, t, insert=not set_local) for t in chosen}
                if auditor_bypasses
                else {}
            )
            if unset:
                session.as_app()
                _probe_unbound(session, target, chosen[0], "no tenant bound")
                session.as_auditor()
            if set_local:
                session.as_app()
            for tenant in [t for t in chosen if rows.get(t) is None]:
                session.bind(tenant)
                rows[tenant] = _row_of(session, target, tenant)
            session.as_app()
            session.bind("")
            _probe_unbound(session, target, chosen[0], "the setting reset to ''")
            for n, tenant in enumerate(chosen):
                _probe_bound(session, target, tenant, chosen[(n + 1) % len(chosen)], rows)
            if truncate:
                session.crossed(
                    "PGT105", f"TRUNCATE {target.display} succeeded as the app role", target.truncate()
                )
            _probe_stranger(session, target, chosen[0])
        finally:
            transaction.rollback()
    return session.leaks


def _pick_tenants(session: _Session, target: Target, auditor_bypasses: bool) -> list[str]:
    """Two tenants that own rows (as the auditing role sees them), completed with fresh ids."""
    found: list[str] = []
    if auditor_bypasses:
        tenant_text = target.tenant.cast(String)
        first = session.conn.execute(
            select(tenant_text).select_from(target.table).where(target.tenant.is_not(None)).limit(1)
        ).scalar()
        if first is not None:
            found.append(first)
            second = session.conn.execute(
                select(tenant_text).select_from(target.table).where(target.tenant != _value(first)).limit(1)
            ).scalar()
            if second is not None:
                found.append(second)
    while len(found) < 2:
        found.append(target.fresh_tenant())
    return found


def _row_of(session: _Session, target: Target, tenant: str, *, insert: bool = True) -> tuple[str, str] | None:
    """(tableoid, ctid) of a row of ``tenant``, inserting a probe row when it has none (and ``insert``)."""
    conn = session.conn
    found = conn.execute(target.find(tenant)).first()
    if found is not None:
        return found[0], found[1]
    if not insert:
        return None
    nested = conn.begin_nested()
    try:
        conn.execute(target.insert(tenant))
        found = conn.execute(target.find(tenant)).first()
    except DBAPIError:
        nested.rollback()
        return None
    nested.commit()  # released into the outer transaction, which is rolled back
    return (found[0], found[1]) if found is not None else None


def _probe_unbound(session: _Session, target: Target, tenant: str, state: str) -> None:
    """With no tenant: nothing may be read, nothing written."""
    session.crossed(
        "PGT106", f"with {state}, the app role reads rows of {target.display}", target.select_all()
    )
    session.crossed(
        "PGT106",
        f"with {state}, the app role inserts a row for tenant {tenant} into {target.display}",
        target.insert(tenant),
    )


def _probe_bound(
    session: _Session, target: Target, tenant: str, other: str, rows: dict[str, tuple[str, str] | None]
) -> None:
    """With ``tenant`` bound: no read, insert, update or delete may reach ``other``'s rows."""
    session.bind(tenant)
    state = f"with tenant {tenant} bound, the app role"
    session.crossed(
        "PGT101", f"{state} reads other tenants' rows of {target.display}", target.select_other_than(tenant)
    )
    session.crossed(
        "PGT102", f"{state} inserts a row for tenant {other} into {target.display}", target.insert(other)
    )
    theirs = rows.get(other)
    if theirs is not None:
        session.crossed(
            "PGT103",
            f"{state} updates a row of tenant {other} in {target.display}",
            target.touch(target.row(*theirs, other)),
            target.touch(target.of_tenant(other)),
        )
        session.crossed(
            "PGT104",
            f"{state} deletes a row of tenant {other} from {target.display}",
            target.delete(target.row(*theirs, other)),
            target.delete(target.of_tenant(other)),
        )


def _probe_stranger(session: _Session, target: Target, other: str) -> None:
    """Bound to a tenant that owns no rows, statements without WHERE must touch nothing; then its one
    probe row must not move to ``other``.

    A WHERE clause (even on ctid) makes PostgreSQL apply the SELECT policies too, which can hide a
    loose UPDATE or DELETE policy; these blind statements see only that command's own policies,
    and are cheap when the policies are right (an index scan that finds nothing).
    """
    stranger = target.fresh_tenant()
    session.bind(stranger)
    state = f"with tenant {stranger} (which owns no rows) bound, the app role"
    session.crossed("PGT101", f"{state} reads rows of {target.display}", target.select_all())
    session.crossed("PGT103", f"{state} updates rows of {target.display}", target.touch())
    session.crossed("PGT104", f"{state} deletes rows of {target.display}", target.delete())
    if _row_of(session, target, stranger) is not None:
        session.crossed(
            "PGT103",
            f"{state} moves its own row of {target.display} to tenant {other}",
            target.move_to(other),
        )


def _probe_readable(
    conn: Connection, *, source: Executable, setting: str, app_role: str | None, tenant: str, set_local: bool
) -> Leak | None:
    """Bind a tenant that owns no rows and select from a view or function: any row crossed tenants."""
    session = _Session(conn, setting, app_role, set_local)
    with conn.begin() as transaction:
        try:
            for name, value in _TIMEOUTS.items():
                conn.execute(select(func.set_config(name, value, True)))
            session.as_app()
            session.bind(tenant)
            session.crossed("PGT107", "", source)
        finally:
            transaction.rollback()
    return session.leaks[0] if session.leaks else None


def run_probes(engine: Engine, snapshot: Snapshot, *, auditor: str) -> list[Finding]:
    """Probe every isolated table, view and SECURITY DEFINER function the app role can reach."""
    skipped = PROBE_RULES["PGT100"]
    if snapshot.app.bypasses:
        return [
            skipped.finding("role " + snapshot.app.name, "dynamic probes skipped: the app role bypasses RLS")
        ]
    auditor_role = next(r for r in snapshot.roles.values() if r.name == auditor)
    app_role = None if auditor == snapshot.app.name else snapshot.app.name
    if app_role is not None and not _can_assume(engine, app_role):
        return [
            skipped.finding(
                "role " + snapshot.app.name,
                f"dynamic probes skipped: {auditor!r} cannot SET ROLE {snapshot.app.name!r} "
                "(audit as a superuser or a member of the app role)",
            )
        ]
    findings = list(_table_findings(engine, snapshot, app_role, auditor_role.bypasses))
    return findings + list(_readable_findings(engine, snapshot, app_role))


def _can_assume(engine: Engine, role: str) -> bool:
    with engine.connect() as conn, conn.begin() as transaction:
        try:
            conn.exec_driver_sql("SET LOCAL ROLE " + _preparer.quote(role))
        except DBAPIError:
            return False
        finally:
            transaction.rollback()
    return True


def _table_findings(
    engine: Engine, snapshot: Snapshot, app_role: str | None, bypasses: bool
) -> Iterator[Finding]:
    for relation in snapshot.isolated_tables():
        if not relation.app_privileges & _PRIVILEGES:
            continue
        target = Target.of(relation)
        if target is None:
            yield PROBE_RULES["PGT100"].finding(
                "table " + relation.qualified, "not probed: pgtenancy cannot build a valid row for it"
            )
            continue
        with engine.connect() as conn:
            leaks = probe_table(
                conn,
                target,
                setting=snapshot.setting,
                app_role=app_role,
                auditor_bypasses=bypasses,
                truncate="TRUNCATE" in relation.app_privileges,
                set_local=snapshot.citus_tables is not None,
            )
        for leak in _first_of_each_rule(leaks):
            rule = PROBE_RULES[leak.rule]
            yield rule.finding(
                "table " + relation.qualified,
                leak.message,
                fix=rule.fix,
                confirmed=True,
                reproduction=leak.reproduction,
            )


def _first_of_each_rule(leaks: list[Leak]) -> list[Leak]:
    """One reproduction per kind of hole is enough to act on."""
    first: dict[str, Leak] = {}
    for leak in leaks:
        first.setdefault(leak.rule, leak)
    return list(first.values())


def _readable_findings(engine: Engine, snapshot: Snapshot, app_role: str | None) -> Iterator[Finding]:
    """Views and zero-argument set-returning SECURITY DEFINER functions that read isolated tables only."""
    candidates: list[tuple[str, Executable, set[int]]] = []
    for view in snapshot.relations.values():
        if view.kind in ("v", "m") and "SELECT" in view.app_privileges:
            source: Executable = select(text("*")).select_from(table(view.name, schema=view.schema)).limit(5)
            kind = "view " if view.kind == "v" else "materialized view "
            candidates.append((kind + view.qualified, source, snapshot.base_tables(view)))
    for function in snapshot.functions.values():
        if (
            function.security_definer
            and function.app_can_execute
            and function.argument_count == 0
            and function.returns_rows
        ):
            call: Function[Any] = Function(function.name, packagenames=(function.schema,))
            source = select(text("*")).select_from(call.table_valued()).limit(5)
            candidates.append(("function " + function.signature, source, snapshot.tables_read(function)))
    for name, source, oids in candidates:
        tenant = _stranger_for([snapshot.relations.get(oid) for oid in oids])
        if tenant is None:
            continue
        with engine.connect() as conn:
            leak = _probe_readable(
                conn,
                source=source,
                setting=snapshot.setting,
                app_role=app_role,
                tenant=tenant,
                set_local=snapshot.citus_tables is not None,
            )
        if leak is not None:
            rule = PROBE_RULES["PGT107"]
            yield rule.finding(
                name,
                f"returns rows while tenant {tenant} (which owns none) is bound",
                fix=rule.fix,
                confirmed=True,
                reproduction=leak.reproduction,
            )


def _stranger_for(tables: list[Relation | None]) -> str | None:
    """A fresh tenant id that fits every table's tenant column; None for shared tables or mixed key types."""
    if not tables or any(t is None or not t.isolated for t in tables):
        return None  # rows of a shared table would look like a leak
    targets = [Target.of(t) for t in tables if t is not None]
    first = targets[0]
    if first is None or len({t.tenant_column.type if t else None for t in targets}) != 1:
        return None
    return first.fresh_tenant()
