"""Dynamic probes: as the app role, try to cross tenants on real rows, inside transactions rolled back."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Select,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.functions import Function

from pgtenancy.audit.attempts import DIALECT, Attempts, literal, qualified, quote, render
from pgtenancy.audit.attempts import insert as insert_sql  # Target.insert is the probes' own
from pgtenancy.audit.findings import Finding, Rule
from pgtenancy.audit.rows import Blueprints, Plan, RowBuilder, Unbuildable
from pgtenancy.audit.sealing import SealKey, read_key, table_verifiers
from pgtenancy.catalog.snapshot import Column, Relation, Snapshot
from pgtenancy.drivers import set_local_renderer

__all__ = ["PROBE_RULES", "Leak", "Outcome", "Target", "probe_table", "run_probes"]

_WORKERS = 4  # tables probed at once, each on its own connection
_TIMEOUTS = {"statement_timeout": "5s", "lock_timeout": "1s"}
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"}

PROBE_RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "PGT100",
            "warning",
            "Probe could not run",
            "A probe could not run, so isolation of the object is unproven; the reason is in the message.",
            "Audit as a superuser (or a member of the app role) so the probes can SET ROLE to the app role "
            "and write probe rows; for a row pgtenancy cannot build, see the message.",
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
        Rule(
            "PGT108",
            "error",
            "Table readable without a valid seal",
            "With one tenant's seal in place and the tenant setting re-pointed to another tenant (what "
            "injected SQL can do), the app role read the other tenant's rows: the table is not sealed.",
            "op.seal_tenant_isolation('t') in a migration: the policy compares the tenant column with the "
            "verifier's answer, never with the setting itself.",
        ),
    )
}
_SEAL_LIFETIME = 600  # seconds a probe's seal stays valid, from the start of its transaction


_REFUSED = "42501"  # insufficient_privilege: no privilege, or a row-level security policy said no
_UNSUPPORTED = "0A000"  # feature_not_supported
# Raised by constraints PostgreSQL checks only after a write passed the row-level security policies:
# a write stopped by one of these was admitted by the policies (pinned by test_audit_probes.py).
_AFTER_POLICIES = {"23502", "23503", "23505", "23P01"}


@dataclass(frozen=True)
class Target:
    """A tenant table to probe, and the SQL text of each probe on it (rows are planned per tenant)."""

    display: str
    oid: int
    name: str  # schema.table, quoted
    tenant_column: Column

    @classmethod
    def of(cls, relation: Relation) -> Target | None:
        """The target for ``relation``, or None when pgtenancy cannot make up a tenant id of its type."""
        tenant = relation.column(relation.tenant_column or "")
        if tenant is None or _fresh_value(tenant) is None:
            return None
        return cls(relation.qualified, relation.oid, qualified(relation.schema, relation.name), tenant)

    @property
    def tenant(self) -> str:
        """The tenant column, quoted."""
        return quote(self.tenant_column.name)

    def fresh_tenant(self) -> str:
        """A tenant id of the column's type, random enough to own no rows."""
        return _fresh_value(self.tenant_column) or ""

    def insert(self, values: dict[str, str]) -> str:
        """INSERT of one row with these column values (literals of no declared type)."""
        return insert_sql(self.name, values)

    def select_all(self) -> str:
        return _sql("SELECT * FROM", self.name, "LIMIT 5")

    def select_of(self, tenant: str) -> str:
        return _sql("SELECT * FROM", self.name, "WHERE", self.of_tenant(tenant), "LIMIT 1")

    def select_other_than(self, tenant: str) -> str:
        return _sql(
            "SELECT * FROM", self.name, "WHERE", self.tenant, "IS DISTINCT FROM", literal(tenant), "LIMIT 5"
        )

    def tenants(self, other_than: str | None = None) -> str:
        """One tenant id (as text) that owns rows, other than ``other_than``."""
        where = "IS NOT NULL" if other_than is None else "<> " + literal(other_than)
        return _sql(
            "SELECT CAST(" + self.tenant, "AS text) FROM", self.name, "WHERE", self.tenant, where, "LIMIT 1"
        )

    def find(self, tenant: str) -> str:
        """(tableoid, ctid) of one row of ``tenant``."""
        located = "SELECT CAST(tableoid AS text), CAST(ctid AS text) FROM"
        return _sql(located, self.name, "WHERE", self.of_tenant(tenant), "LIMIT 1")

    def touch(self, where: str | None = None) -> str:
        """UPDATE that rewrites the tenant column with itself: it changes nothing but needs UPDATE rights."""
        return _sql("UPDATE", self.name, "SET", self.tenant, "=", self.tenant, *_where(where))

    def move_to(self, tenant: str) -> str:
        return _sql("UPDATE", self.name, "SET", self.tenant, "=", literal(tenant))

    def delete(self, where: str | None = None) -> str:
        return _sql("DELETE FROM", self.name, *_where(where))

    def truncate(self) -> str:
        return _sql("TRUNCATE", self.name)

    def row(self, tableoid: str, ctid: str, tenant: str) -> str:
        """The condition that picks ``tenant``'s row by its physical address.

        The tenant pins the shard on Citus, where each shard has its own ctids and ``tableoid`` names
        the distributed table: an address alone would also match the bound tenant's own row.
        """
        address = _sql("tableoid =", literal(tableoid), "AND ctid =", literal(ctid))
        return _sql(address, "AND", self.of_tenant(tenant))

    def of_tenant(self, tenant: str) -> str:
        return _sql(self.tenant, "=", literal(tenant))


def _sql(*parts: str) -> str:
    """SQL text from parts that are keywords, ``quote()``d names and ``literal()`` values, space-separated."""
    return " ".join(parts)


def _where(condition: str | None) -> tuple[str, ...]:
    return () if condition is None else ("WHERE", condition)


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


@dataclass(frozen=True)
class Leak:
    """A probe that crossed tenants: which rule it proves, a sentence, and SQL that reproduces it."""

    rule: str
    message: str
    reproduction: str


@dataclass
class _Session:
    """One probing transaction: switches between the auditing role and the app role, binds tenants,
    plans probe rows, and keeps what crossed and what could not be decided."""

    attempts: Attempts
    setting: str
    app_role: str | None  # None: the connection already is the app role
    set_local: bool = (
        False  # bind with SET LOCAL, which Citus forwards to its workers (set_config it does not)
    )
    seals: tuple[SealKey, ...] = ()  # keys to seal each bound tenant with (sealed tables)
    backend_pid: int = 0  # what a seal is bound to, read when the transaction starts
    expires: int = 0
    builder: RowBuilder | None = None
    bound: str | None = None
    repointed: str | None = None  # the tenant setting moved to after binding, without a seal of its own
    as_app_now: bool = False
    leaks: list[Leak] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)  # probes that could not run, with the reason
    plans: dict[str, Plan] = field(default_factory=dict)
    rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    unbuildable: dict[str, str] = field(default_factory=dict)

    def as_app(self) -> None:
        if self.app_role is not None:
            self.attempts.run("SET LOCAL ROLE " + quote(self.app_role))
        self.as_app_now = True

    def as_auditor(self) -> None:
        if self.app_role is not None:
            self.attempts.run("SET LOCAL ROLE NONE")
        self.as_app_now = False

    def bind(self, tenant: str) -> None:
        self.attempts.run(self.binding(tenant))
        self.bound, self.repointed = tenant, None

    def repoint(self, tenant: str) -> None:
        """Set the tenant setting alone, as injected SQL could: the seal stays the bound tenant's."""
        self.attempts.run(_set_config(self.setting, tenant))
        self.repointed = tenant

    def binding(self, tenant: str, *, shown: bool = False) -> str:
        """The statement binding ``tenant`` (sealed for this backend when the table is sealed) for the rest
        of the transaction; ``shown``: with a placeholder instead of each seal, for a reproduction."""
        if self.set_local:
            return str(set_local_renderer(DIALECT, self.setting)(tenant))
        calls = [_set_config(self.setting, tenant).removeprefix("SELECT ")]
        for key in self.seals if tenant else ():
            seal = f"<a seal of {tenant} signed with key {key.key_id}>" if shown else self.sign(key, tenant)
            calls.append(_set_config(key.setting, seal).removeprefix("SELECT "))
        return "SELECT " + ", ".join(calls)

    def sign(self, key: SealKey, tenant: str) -> str:
        return key.sign(tenant, self.backend_pid, self.expires)

    def first(self, statement: Executable | str) -> tuple[Any, ...] | None:
        """The first row ``statement`` returns (None when none, or when it fails)."""
        rows = self.attempts.rows(statement)
        return rows[0] if isinstance(rows, list) and rows else None

    def prepare(self, target: Target, tenant: str, *, as_auditor: bool) -> None:
        """Plan rows of ``tenant`` (inserting their parent rows) and find or insert one such row.

        :param as_auditor: write as the auditing role (it bypasses RLS); else as the app role with
            ``tenant`` bound (on Citus, and when the auditor is the app role).
        """
        if tenant in self.plans or tenant in self.unbuildable or self.builder is None:
            return
        was_app = self.as_app_now
        if as_auditor and was_app:
            self.as_auditor()
        elif not as_auditor:
            self.bind(tenant)
        try:
            plan = self.builder.plan(target.oid, tenant)
        except Unbuildable as error:
            self.unbuildable[tenant] = str(error)
        else:
            self.plans[tenant] = plan
            found = self.first(target.find(tenant))
            if found is None and self.attempt(target.insert(plan.render()), keep=True) == 1:
                found = self.first(target.find(tenant))
            if found is not None:
                self.rows[tenant] = (found[0], found[1])
        if as_auditor and was_app:
            self.as_app()

    def values(self, target: Target, tenant: str) -> dict[str, str]:
        """Column values of a new row of ``tenant``: its plan, or a sketch without parent rows.

        A sketch may break a foreign key; PostgreSQL checks foreign keys only after the policies, so
        the policies' verdict on it still shows.
        """
        plan = self.plans.get(tenant)
        if plan is None and self.builder is not None:
            try:
                plan = self.builder.sketch(target.oid, tenant)
            except Unbuildable as error:
                self.unbuildable.setdefault(tenant, str(error))
        if plan is None:
            return {target.tenant_column.name: tenant}
        return plan.render()

    def attempt(self, statement: Executable | str, *, keep: bool = False) -> int | str:
        """Run ``statement`` in a savepoint (rolled back unless ``keep``): the rows it returned or touched
        (a write the policies admitted but a later constraint stopped counts as one), 0 when refused,
        or the error when the outcome says nothing about the policies."""
        outcome = self.attempts.rows(statement, keep=keep)
        if isinstance(outcome, list):
            return len(outcome)
        if isinstance(outcome, int):
            return outcome
        if outcome.sqlstate == _REFUSED:
            return 0
        if not _reads(statement):
            if outcome.sqlstate in _AFTER_POLICIES:
                return 1
            if outcome.sqlstate == _UNSUPPORTED:
                return 0  # a write the database cannot do at all (Citus: a tenant key that moves a row)
        return outcome.message

    def crossed(
        self, rule: str, message: str, statement: Executable | str, shown: Executable | str | None = None
    ) -> None:
        """Record a leak when ``statement`` returns or touches a row (``shown``: a readable equivalent),
        or that the probe could not decide when it failed for another reason than the policies."""
        outcome = self.attempt(statement)
        if isinstance(outcome, str):
            self.undecided.append(f"{rule} ({message}): {outcome}")
        elif outcome > 0:
            self.leaks.append(
                Leak(rule, message, self.reproduction(shown if shown is not None else statement))
            )

    def reproduction(self, statement: Executable | str) -> str:
        lines = ["BEGIN;"]
        if self.app_role is not None:
            lines.append("SET LOCAL ROLE " + quote(self.app_role) + ";")
        if self.bound is not None:
            lines.append(self.binding(self.bound, shown=True) + ";")
        if self.repointed is not None:
            lines.append(_set_config(self.setting, self.repointed) + ";")
        lines += [_render(statement) + ";", "ROLLBACK;"]
        return "\n".join(lines)


def _set_config(setting: str, value: str) -> str:
    return "SELECT set_config(" + literal(setting) + ", " + literal(value) + ", true)"


def _reads(statement: Executable | str) -> bool:
    """Whether ``statement`` only reads (a SELECT)."""
    if isinstance(statement, str):
        return statement.startswith("SELECT")
    return isinstance(statement, Select)


def _render(statement: Executable | str) -> str:
    """``statement`` with its values inlined as quoted literals, on one line, for display only."""
    return " ".join((statement if isinstance(statement, str) else render(statement)).split())


@dataclass(frozen=True)
class Outcome:
    """What the probes of one table found: leaks, and probes that could not run (with the reason)."""

    leaks: list[Leak]
    undecided: list[str]


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
    blueprints: Blueprints | None = None,
    tenant_column: Callable[[int], str | None] | None = None,
    seals: Sequence[SealKey] = (),
    check_seal: bool = False,
) -> Outcome:
    """Try to cross tenants on ``target`` in one transaction that is rolled back; return what crossed.

    :param app_role: the role to ``SET LOCAL ROLE`` to for the probes; None when ``conn`` is that role.
    :param auditor_bypasses: the connection's own role reads every row (superuser or BYPASSRLS), so
        real tenants are picked and probe rows inserted without binding a tenant.
    :param tenants: tenant ids to probe (two real ones, or fresh ones, are picked when empty).
    :param set_local: bind tenants with ``SET LOCAL`` (Citus: ``set_config`` stays on the coordinator).
    :param blueprints: the catalog's insert requirements (read here when not given).
    :param tenant_column: a table oid's tenant column, to pass tenants to parent rows (default: the
        target's tenant column name, where a table has it).
    :param seals: keys of the verifiers the table's policies call: each bound tenant is sealed with them.
    :param check_seal: also prove that re-pointing the tenant setting, without a seal, shows no rows.
    """
    with conn.begin() as transaction:
        try:
            catalog = blueprints if blueprints is not None else Blueprints(conn)
            session = _Session(Attempts(conn, citus=set_local), setting, app_role, set_local, tuple(seals))
            found = _start(session)
            session.builder = RowBuilder(
                session.attempts, catalog, tenant_column or _by_name(catalog, target)
            )
            chosen = list(tenants) or _pick_tenants(session, target, auditor_bypasses)
            # Citus refuses a role to touch shard placements another role modified in the transaction,
            # so there every probe row is written by the app role, under its own tenant.
            by_auditor = auditor_bypasses and not set_local
            if by_auditor:
                for tenant in chosen:
                    session.prepare(target, tenant, as_auditor=True)
            _probe_never_set(session, target, chosen[0], found)
            if set_local:
                session.as_app()
            for tenant in chosen:
                session.prepare(target, tenant, as_auditor=False)
            session.as_app()
            session.bind("")
            _probe_unbound(session, target, chosen[0], "the setting reset to ''")
            for n, tenant in enumerate(chosen):
                _probe_bound(session, target, tenant, chosen[(n + 1) % len(chosen)])
            if check_seal:
                _probe_seal(session, target, chosen[0], chosen[1])
            if truncate:
                session.crossed(
                    "PGT105", f"TRUNCATE {target.display} succeeded as the app role", target.truncate()
                )
            _probe_stranger(session, target, chosen[0], by_auditor)
        finally:
            transaction.rollback()
    return Outcome(session.leaks, session.undecided)


def _probe_never_set(session: _Session, target: Target, tenant: str, found: str | None) -> None:
    """The probes with the setting never set on the connection; a value a new connection already reads
    makes them impossible, and every session that binds no tenant act as that tenant: said, not skipped."""
    if found is None:
        session.as_app()
        _probe_unbound(session, target, tenant, "no tenant bound")
        session.as_auditor()
    elif found:  # '' reads as no tenant, which the probes with the setting reset to '' cover
        session.undecided.append(
            f"PGT106 (no tenant bound): a new connection reads the tenant setting as {found!r} (a default "
            "in postgresql.conf, for the database or for the auditing role): sessions that bind no tenant "
            "act as that tenant, and the probes with no tenant bound cannot run"
        )


def _start(session: _Session) -> str | None:
    """Set the probing transaction's timeouts; the tenant setting as the new connection reads it (None:
    never set, the state the probes with no tenant bound need)."""
    for name, timeout in _TIMEOUTS.items():
        session.attempts.run("SELECT set_config(" + literal(name) + ", " + literal(timeout) + ", true)")
    found: str | None = session.attempts.run(
        "SELECT current_setting(" + literal(session.setting) + ", true)"
    )[0][0]
    if session.seals:
        session.backend_pid, now = session.attempts.run(
            "SELECT pg_backend_pid(), CAST(extract(epoch FROM now()) AS bigint)"
        )[0]
        session.expires = now + _SEAL_LIFETIME
    return found


def _by_name(catalog: Blueprints, target: Target) -> Callable[[int], str | None]:
    """Tables whose columns include the target's tenant column name carry the tenant under that name."""
    name = target.tenant_column.name
    return lambda oid: name if catalog.has_column(oid, name) else None


def _pick_tenants(session: _Session, target: Target, auditor_bypasses: bool) -> list[str]:
    """Two tenants that own rows (as the auditing role sees them), completed with fresh ids."""
    found: list[str] = []
    if auditor_bypasses:
        first = session.first(target.tenants())
        if first is not None:
            found.append(first[0])
            second = session.first(target.tenants(other_than=first[0]))
            if second is not None:
                found.append(second[0])
    while len(found) < 2:
        found.append(target.fresh_tenant())
    return found


def _probe_unbound(session: _Session, target: Target, tenant: str, state: str) -> None:
    """With no tenant: nothing may be read, nothing written."""
    session.crossed(
        "PGT106", f"with {state}, the app role reads rows of {target.display}", target.select_all()
    )
    session.crossed(
        "PGT106",
        f"with {state}, the app role inserts a row for tenant {tenant} into {target.display}",
        target.insert(session.values(target, tenant)),
    )


def _probe_bound(session: _Session, target: Target, tenant: str, other: str) -> None:
    """With ``tenant`` bound: no read, insert, update or delete may reach ``other``'s rows."""
    session.bind(tenant)
    state = f"with tenant {tenant} bound, the app role"
    session.crossed(
        "PGT101", f"{state} reads other tenants' rows of {target.display}", target.select_other_than(tenant)
    )
    session.crossed(
        "PGT102",
        f"{state} inserts a row for tenant {other} into {target.display}",
        target.insert(session.values(target, other)),
    )
    theirs = session.rows.get(other)
    if theirs is None:
        reason = session.unbuildable.get(other, "the row could not be inserted")
        session.undecided.append(f"PGT103/PGT104: tenant {other} has no row to aim at ({reason})")
        return
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


def _probe_seal(session: _Session, target: Target, tenant: str, other: str) -> None:
    """With ``tenant``'s seal in place and the tenant setting re-pointed to ``other``, nothing may be read.

    First the control: bound (and sealed) as ``other``, the app role must see its row; otherwise the
    probes cannot tell a sealed table from one closed to everybody, and say so.
    """
    if other not in session.rows:
        reason = session.unbuildable.get(other, "the row could not be inserted")
        session.undecided.append(f"PGT108: tenant {other} has no row to aim at ({reason})")
        return
    session.bind(other)
    seen = session.attempt(target.select_of(other))
    if isinstance(seen, str) or seen == 0:
        sealed = " and sealed with a key of the key table" if session.seals else ""
        session.undecided.append(
            f"PGT108: bound to tenant {other}{sealed}, the app role sees none of its rows of "
            f"{target.display} ({seen or 'no row'}): the probes cannot tell a sealed table from a closed one"
        )
        return
    session.bind(tenant)
    session.repoint(other)
    session.crossed(
        "PGT108",
        f"with tenant {tenant} bound{' and sealed' if session.seals else ''} and the tenant setting "
        f"re-pointed to {other} (no seal of its own), the app role reads rows of {target.display}",
        target.select_all(),
    )


def _probe_stranger(session: _Session, target: Target, other: str, by_auditor: bool) -> None:
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
    session.prepare(target, stranger, as_auditor=by_auditor)
    session.bind(stranger)
    if stranger in session.rows:
        session.crossed(
            "PGT103",
            f"{state} moves its own row of {target.display} to tenant {other}",
            target.move_to(other),
        )


def _probe_readable(
    conn: Connection, *, source: Executable, setting: str, app_role: str | None, tenant: str, set_local: bool
) -> Outcome:
    """Bind a tenant that owns no rows and select from a view or function: any row crossed tenants."""
    with conn.begin() as transaction:
        try:
            session = _Session(Attempts(conn, citus=set_local), setting, app_role, set_local)
            _start(session)
            session.as_app()
            session.bind(tenant)
            session.crossed("PGT107", "", source)
        finally:
            transaction.rollback()
    return Outcome(session.leaks, session.undecided)


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
            conn.exec_driver_sql("SET LOCAL ROLE " + quote(role))
        except DBAPIError:
            return False
        finally:
            transaction.rollback()
    return True


def _table_findings(
    engine: Engine, snapshot: Snapshot, app_role: str | None, bypasses: bool
) -> Iterator[Finding]:
    """Probe every tenant table the app role holds a privilege on, ``_WORKERS`` tables at a time.

    Each table is probed on a fresh connection (the probes with no tenant bound need one that never
    set the tenant setting); the connections of the workers overlap the client's and the server's work.
    """
    with engine.connect() as conn:
        blueprints = Blueprints(conn)
        conn.rollback()
    targets: list[tuple[Relation, Target, tuple[SealKey, ...]]] = []
    keys: dict[str, SealKey | str] = {}
    for relation in snapshot.isolated_tables():
        if not relation.app_privileges & _PRIVILEGES:
            continue
        target = Target.of(relation)
        if target is None:
            yield PROBE_RULES["PGT100"].finding(
                "table " + relation.qualified,
                f"not probed: pgtenancy cannot make up a tenant id for column {relation.tenant_column}",
            )
            continue
        for verifier in table_verifiers(snapshot, relation):
            if verifier.schema.name not in keys:
                keys[verifier.schema.name] = read_key(engine, verifier)
        found = [keys[verifier.schema.name] for verifier in table_verifiers(snapshot, relation)]
        unsigned = [reason for reason in found if isinstance(reason, str)]
        if unsigned:
            yield PROBE_RULES["PGT100"].finding(
                "table " + relation.qualified,
                "not probed: its policies are sealed and the probes cannot sign a seal: "
                + "; ".join(unsigned),
            )
            continue
        targets.append((relation, target, tuple(key for key in found if isinstance(key, SealKey))))

    def probe(job: tuple[Relation, Target, tuple[SealKey, ...]]) -> Outcome:
        relation, target, seals = job
        with engine.connect() as conn:
            return probe_table(
                conn,
                target,
                setting=snapshot.setting,
                app_role=app_role,
                auditor_bypasses=bypasses,
                truncate="TRUNCATE" in relation.app_privileges,
                set_local=snapshot.citus_tables is not None,
                blueprints=blueprints,
                tenant_column=_tenant_columns(snapshot, blueprints, target),
                seals=seals,
                check_seal=(bool(seals) or snapshot.sealing_declared) and "SELECT" in relation.app_privileges,
            )

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for (relation, *_), outcome in zip(targets, pool.map(probe, targets), strict=True):
            yield from _findings("table " + relation.qualified, outcome)


def _tenant_columns(
    snapshot: Snapshot, blueprints: Blueprints, target: Target
) -> Callable[[int], str | None]:
    """An audited table's own tenant column; elsewhere a column named like the target's."""
    name = target.tenant_column.name

    def tenant_column(oid: int) -> str | None:
        relation = snapshot.relations.get(oid)
        if relation is not None:
            return relation.tenant_column
        return name if blueprints.has_column(oid, name) else None

    return tenant_column


def _findings(obj: str, outcome: Outcome) -> Iterator[Finding]:
    """One finding per kind of leak (one reproduction is enough to act on) and one for what could not run."""
    first: dict[str, Leak] = {}
    for leak in outcome.leaks:
        first.setdefault(leak.rule, leak)
    for leak in first.values():
        rule = PROBE_RULES[leak.rule]
        yield rule.finding(obj, leak.message, fix=rule.fix, confirmed=True, reproduction=leak.reproduction)
    if outcome.undecided:
        shown = "; ".join(outcome.undecided[:3])
        more = f" (and {len(outcome.undecided) - 3} more)" if len(outcome.undecided) > 3 else ""
        yield PROBE_RULES["PGT100"].finding(obj, f"probes could not run: {shown}{more}")


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
            outcome = _probe_readable(
                conn,
                source=source,
                setting=snapshot.setting,
                app_role=app_role,
                tenant=tenant,
                set_local=snapshot.citus_tables is not None,
            )
        leaks = [
            replace(leak, message=f"returns rows while tenant {tenant} (which owns none) is bound")
            for leak in outcome.leaks
        ]
        yield from _findings(name, Outcome(leaks, outcome.undecided))


def _stranger_for(tables: list[Relation | None]) -> str | None:
    """A fresh tenant id that fits every table's tenant column; None for shared tables or mixed key types."""
    if not tables or any(t is None or not t.isolated for t in tables):
        return None  # rows of a shared table would look like a leak
    targets = [Target.of(t) for t in tables if t is not None]
    first = targets[0]
    if first is None or len({t.tenant_column.type if t else None for t in targets}) != 1:
        return None
    return first.fresh_tenant()
