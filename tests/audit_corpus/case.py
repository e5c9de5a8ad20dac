"""A hole of the corpus, and the case it is built in: one schema, an app role of its own, rows of A and B.

Test-only DDL built from trusted constants and generated names (as ``tests/audit_sandbox.py`` does).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pgtenancy.testing import TestDatabase
from tests.audit_sandbox import PREDICATE, TENANT_A, TENANT_B, Sandbox

__all__ = [
    "A_SECRET",
    "B_SECRET",
    "PREDICATE",
    "TENANT_A",
    "TENANT_B",
    "Build",
    "Case",
    "Exploit",
    "Hole",
    "NotExploited",
    "admin_engine",
    "attempt",
    "bind",
    "drop_own_database",
    "harden",
    "leaked",
    "open_case",
    "own_database",
]

A_SECRET = "a-private"
B_SECRET = "b-secret"
APP_ATTRIBUTES = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"


class NotExploited(AssertionError):
    """The exploit did not reach tenant B: the hole is closed (or the exploit is wrong)."""


@dataclass
class Case(Sandbox):
    """One hole's (or the correct database's) schema, with an app role made for it alone.

    ``{s}``, ``{app}``, ``{owner}``, ``{p}``, ``{db}`` and every entry of ``names`` fill the DDL.
    """

    names: dict[str, str] = field(default_factory=dict)
    extra_schemas: list[str] = field(default_factory=list)
    own_database: bool = False
    on_close: list[str] = field(default_factory=list)  # SQL run as the superuser before the drop

    @property
    def db(self) -> str:
        return self.database.name

    def fill(self, template: str, **names: str) -> str:
        values = {
            "s": self.schema,
            "app": self.app,
            "owner": self.database.roles.owner,
            "p": PREDICATE,
            "db": self.db,
            "a": str(TENANT_A),
            "b": str(TENANT_B),
            **self.names,
            **names,
        }
        return template.format(**values)

    def sql(self, ddl: str, *, as_owner: bool = True, **names: str) -> None:
        """Run ``ddl`` (its names filled in) as the owner role (default) or as the superuser."""
        statement = self.fill(ddl, **names)
        with self.admin.begin() as conn:
            if as_owner:
                conn.exec_driver_sql("SET LOCAL ROLE " + self.database.roles.owner)
            conn.exec_driver_sql(statement)

    def scalar(self, query: str, **names: str) -> Any:
        """One value read as the superuser."""
        with self.admin.connect() as conn:
            return conn.exec_driver_sql(self.fill(query, **names)).scalar()

    def role(self, attributes: str = "NOLOGIN") -> str:
        """A fresh cluster-wide role (unique name), dropped with the case."""
        name = "pgt_c_" + secrets.token_hex(4)
        with self.admin.begin() as conn:
            conn.exec_driver_sql("CREATE ROLE " + name + " " + attributes)
            conn.exec_driver_sql("GRANT USAGE ON SCHEMA " + self.schema + " TO " + name)
        self.extra_roles.append(name)
        return name

    def schema_for(self, suffix: str) -> str:
        """Another schema of this case (dropped with it), owned by the owner role."""
        name = self.schema + "_" + suffix
        self.sql("CREATE SCHEMA " + name + " AUTHORIZATION {owner}", as_owner=False)
        self.extra_schemas.append(name)
        return name

    def tenant_table(
        self,
        name: str = "t",
        *,
        columns: str = "",
        policy: str | None = "USING ({p}) WITH CHECK ({p})",
        rls: bool = True,
        force: bool = True,
        grants: str = "SELECT, INSERT, UPDATE, DELETE",
        seed: bool = True,
    ) -> str:
        """``{s}.name``: id, tenant_id, body (+ ``columns``), keyed by tenant; seeded with A's and B's."""
        self.table(
            name,
            policy=policy,
            rls=rls,
            force=force,
            grants=grants,
            seed=False,
            key=(columns + ", " if columns else "") + "PRIMARY KEY (tenant_id, id)",
        )
        if seed:
            self.seed_secrets(name)
        return name

    def seed_secrets(self, name: str, columns: str = "", values: str = "", *, b_first: bool = False) -> None:
        """Two rows of A (``a-private-n``) and two of B (``b-secret-n``), inserted as the superuser.

        :param columns: more columns to fill, as ``", c1, c2"``; ``values`` their SQL, as ``", v1, v2"``.
        """
        tenants = [(TENANT_B, B_SECRET), (TENANT_A, A_SECRET)]
        if not b_first:
            tenants.reverse()
        insert = text(
            self.fill(
                "INSERT INTO {s}."
                + name
                + " (tenant_id, body"
                + columns
                + ") VALUES (:t, :body"
                + values
                + ")"
            )
        )
        with self.admin.begin() as conn:
            for tenant, body in tenants:
                for n in (1, 2):
                    conn.execute(insert, {"t": tenant, "body": body + "-" + str(n)})

    def app_engine(self, role: str | None = None) -> Engine:
        """An unpooled engine connected as the case's app role (or ``role``, which must be able to log in)."""
        url = self.database.server.url(
            database=self.db, username=role or self.app, password=self.database.roles.password
        )
        return create_engine(url, poolclass=NullPool)

    @contextmanager
    def connect_app(self) -> Iterator[Connection]:
        """A connection as the app role, nothing bound; whatever is left open is rolled back."""
        engine = self.app_engine()
        try:
            with engine.connect() as conn:
                yield conn
                conn.rollback()
        finally:
            engine.dispose()

    @contextmanager
    def as_tenant(self, tenant: object = TENANT_A) -> Iterator[Connection]:
        """A transaction as the app role with ``tenant`` bound by ``set_config(..., true)``; rolled back."""
        with self.connect_app() as conn:
            bind(conn, tenant)
            yield conn

    def close(self) -> None:
        for statement in self.on_close:
            with self.admin.begin() as conn:
                conn.exec_driver_sql(self.fill(statement))
        with self.admin.begin() as conn:
            for schema in [self.schema, *self.extra_schemas]:
                conn.exec_driver_sql("DROP SCHEMA IF EXISTS " + schema + " CASCADE")
        with self.admin.begin() as conn:
            for role in reversed(self.extra_roles):
                conn.exec_driver_sql("DROP OWNED BY " + role + " CASCADE")
            for role in reversed(self.extra_roles):
                conn.exec_driver_sql("DROP ROLE " + role)


def bind(conn: Connection, tenant: object) -> None:
    """Bind ``tenant`` for the connection's current transaction, as pgtenancy does."""
    conn.execute(text("SELECT set_config('app.current_tenant_id', :t, true)"), {"t": str(tenant)})


def attempt(conn: Connection, sql: str, parameters: dict[str, Any] | None = None) -> Sequence[Any] | str:
    """Run ``sql`` in a savepoint: its rows (or rowcount as a one-item list), or the error message."""
    savepoint = conn.begin_nested()
    try:
        result = conn.execute(text(sql), parameters or {})
        rows: Sequence[Any] = result.all() if result.returns_rows else [result.rowcount]
    except DBAPIError as error:
        savepoint.rollback()
        return str(error.orig)
    savepoint.commit()
    return rows


def leaked(evidence: object, secret: str = B_SECRET) -> str:
    """``evidence`` as text when it shows ``secret`` (tenant B's data), else raise NotExploited."""
    shown = evidence if isinstance(evidence, str) else repr(evidence)
    if secret not in shown:
        raise NotExploited("tenant B's data not reached: " + shown[:500])
    return shown[:500]


Build = Callable[[Case], None]
Exploit = Callable[[Case], str]


@dataclass(frozen=True)
class Hole:
    """A realistic hole between tenants, how to make it, how to use it, and what the audit should name.

    :param id: a short slug, unique in the corpus.
    :param family: the class of hole (policies, roles, tables, objects, functions).
    :param build: makes the hole in the case's schema (``case.names`` may gain names for ``expect``).
    :param exploit: as the app role, with tenant A bound, reaches tenant B (or shows the escalation);
        returns the evidence, raises ``NotExploited`` when the hole is closed.
    :param expect: the objects a finding may name to count as naming the hole (any one), filled like DDL;
        a finding on ``policy <name> on <schema>.<table>`` names ``table <schema>.<table>``.
    :param own_database: built in a database of its own (it changes database-wide settings).
    :param unavailable: why the hole cannot be built on this server, or None.
    """

    id: str
    family: str
    description: str
    build: Build
    exploit: Exploit
    expect: tuple[str, ...]
    own_database: bool = False
    unavailable: Callable[[Engine], str | None] | None = None


def admin_engine(database: TestDatabase) -> Engine:
    return create_engine(database.url("admin"), poolclass=NullPool)


def open_case(database: TestDatabase, *, label: str, app_attributes: str = APP_ATTRIBUTES) -> Case:
    """A fresh schema in ``database`` owned by the owner role, and a login app role of its own."""
    admin = admin_engine(database)
    case = Case(database, admin, "corpus_" + label[:20] + "_" + secrets.token_hex(3))
    case.sql("CREATE SCHEMA {s} AUTHORIZATION {owner}", as_owner=False)
    case.app_role = case.role(app_attributes + " PASSWORD '" + database.roles.password + "'")
    return case


def harden(database: TestDatabase) -> None:
    """Take TEMPORARY from PUBLIC (pgtenancy's hardening op), so only a hole that grants it has it."""
    engine = create_engine(database.url("admin"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("REVOKE TEMPORARY ON DATABASE " + database.name + " FROM PUBLIC")
    finally:
        engine.dispose()


def own_database(database: TestDatabase) -> TestDatabase:
    name = "pgt_corpus_" + secrets.token_hex(3)
    engine = create_engine(database.url("admin"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE " + name + " OWNER " + database.roles.owner)
    finally:
        engine.dispose()
    own = replace(database, name=name)
    harden(own)
    return own


def drop_own_database(database: TestDatabase, own: TestDatabase) -> None:
    engine = create_engine(database.url("admin"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP DATABASE IF EXISTS " + own.name + " WITH (FORCE)")
    finally:
        engine.dispose()
