"""Roles and per-test databases on a test server, cloned from one template database."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import URL, Connection, String, create_engine, literal, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.pool import NullPool

from pgtenancy.testing.server import TestServer

__all__ = [
    "TestDatabase",
    "TestRoles",
    "clone_database",
    "create_roles",
    "create_template",
    "drop_database",
    "drop_roles",
]

Role = Literal["app", "owner", "admin"]
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_quote = _DIALECT.identifier_preparer.quote


@dataclass(frozen=True)
class TestRoles:
    """The two roles of a tenant application: the schema owner and the least-privileged app role."""

    __test__ = False

    owner: str
    app: str
    password: str


@dataclass(frozen=True)
class TestDatabase:
    """A database on the test server, owned by ``roles.owner``, that ``roles.app`` can connect to."""

    __test__ = False

    name: str
    server: TestServer
    roles: TestRoles

    def url(self, role: Role = "app", *, drivername: str = "postgresql+psycopg") -> URL:
        """A URL to this database as the app role, the owner role or the server's superuser."""
        if role == "admin":
            return self.server.url(database=self.name, drivername=drivername)
        username = self.roles.app if role == "app" else self.roles.owner
        return self.server.url(
            database=self.name, username=username, password=self.roles.password, drivername=drivername
        )


def _admin(
    server: TestServer, statements: Callable[[Connection], object], database: str | None = None
) -> None:
    """Run ``statements`` as the superuser, outside a transaction (CREATE/DROP DATABASE need that)."""
    engine = create_engine(server.url(database=database), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            statements(conn)
    finally:
        engine.dispose()


def _literal(value: str) -> str:
    return str(literal(value, String()).compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


def create_roles(server: TestServer, prefix: str = "pgt") -> TestRoles:
    """Create a fresh owner role and a NOSUPERUSER NOBYPASSRLS app role, both able to log in."""
    suffix = secrets.token_hex(4)
    roles = TestRoles(
        owner=f"{prefix}_owner_{suffix}", app=f"{prefix}_app_{suffix}", password=secrets.token_hex(16)
    )
    attributes = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD "

    def run(conn: Connection) -> None:
        for role in (roles.owner, roles.app):
            conn.exec_driver_sql("CREATE ROLE " + _quote(role) + " " + attributes + _literal(roles.password))

    _admin(server, run)
    return roles


def drop_roles(server: TestServer, roles: TestRoles) -> None:
    """Drop the roles made by ``create_roles`` (their databases must be dropped first)."""

    def run(conn: Connection) -> None:
        for role in (roles.app, roles.owner):
            conn.exec_driver_sql("DROP ROLE IF EXISTS " + _quote(role))

    _admin(server, run)


def create_template(
    server: TestServer,
    roles: TestRoles,
    name: str,
    setup: Callable[[Connection, TestRoles], None] | None = None,
) -> None:
    """Create the template database: schema ``public`` owned by the owner, usable by the app role.

    As ``op.revoke_temporary_tables`` leaves a database, PUBLIC holds no TEMPORARY on it (nor on its
    clones): grant it back by name in a test that needs temporary tables.

    :param setup: called with a connection as the owner role (in a transaction that is committed)
        and the roles, to build the schema every cloned database starts with.
    """
    _admin(
        server,
        lambda conn: conn.exec_driver_sql(
            "CREATE DATABASE " + _quote(name) + " OWNER " + _quote(roles.owner)
        ),
    )

    def grants(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER SCHEMA public OWNER TO " + _quote(roles.owner))
        conn.exec_driver_sql("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        conn.exec_driver_sql("GRANT USAGE ON SCHEMA public TO " + _quote(roles.app))
        _revoke_temporary(conn, name)

    _admin(server, grants, database=name)
    if setup is not None:
        engine = create_engine(
            server.url(database=name, username=roles.owner, password=roles.password), poolclass=NullPool
        )
        try:
            with engine.begin() as conn:
                setup(conn, roles)
        finally:
            engine.dispose()


def _revoke_temporary(conn: Connection, database: str) -> None:
    """PUBLIC may not create temporary tables in ``database`` (privileges on a database are not cloned)."""
    conn.exec_driver_sql("REVOKE TEMPORARY ON DATABASE " + _quote(database) + " FROM PUBLIC")


def clone_database(server: TestServer, template: str, name: str, roles: TestRoles) -> TestDatabase:
    """Create database ``name`` as a copy of ``template`` (fast: a file copy, no replay of the schema).

    The copy gets no TEMPORARY for PUBLIC either, as the template.
    """

    def run(conn: Connection) -> None:
        version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
        conn.exec_driver_sql(
            "CREATE DATABASE "
            + _quote(name)
            + " TEMPLATE "
            + _quote(template)
            + " OWNER "
            + _quote(roles.owner)
            + strategy
        )
        _revoke_temporary(conn, name)

    _admin(server, run)
    return TestDatabase(name=name, server=server, roles=roles)


def drop_database(server: TestServer, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still connected to it."""
    _admin(
        server, lambda conn: conn.exec_driver_sql("DROP DATABASE IF EXISTS " + _quote(name) + " WITH (FORCE)")
    )
