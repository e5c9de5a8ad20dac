"""examples/saas: the reference app, on a database built by its own migrations, with its roles.

Sign-up before any tenant exists, members acting only in their organizations, composite tenant keys,
a SQLModel table, staff reports on a BYPASSRLS engine, a worker running jobs as the requesting tenant,
and the migrated database passing ``pgtenancy check`` with the admin role declared.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from pgtenancy.audit import audit
from pgtenancy.jobs.carrier import BINDING
from pgtenancy.testing import TestRoles, TestServer
from pgtenancy.testing.database import create_template, drop_database
from pgtenancy.testing.migrations import alembic_schema

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # the example is the package ``saas`` in examples/

from saas.app import create_app  # noqa: E402
from saas.settings import Settings  # noqa: E402
from saas.worker import Worker  # noqa: E402

JWT_KEY = secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Saas:
    """The migrated database: its name, the server, the run's roles and the admin role made for it."""

    name: str
    server: TestServer
    roles: TestRoles
    admin: str

    def url(self, username: str, drivername: str = "postgresql+asyncpg") -> str:
        url = self.server.url(
            database=self.name, username=username, password=self.roles.password, drivername=drivername
        )
        return url.render_as_string(hide_password=False)


def _superuser(server: TestServer, statement: str) -> None:
    engine = create_engine(server.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


@pytest.fixture(scope="module")
def saas(pgtenancy_server: TestServer, pgtenancy_roles: TestRoles) -> Iterator[Saas]:
    """A database migrated by examples/saas/migrations as the owner, with a BYPASSRLS admin role."""
    admin = "pgt_saas_admin_" + secrets.token_hex(3)
    quoted = '"' + admin + '"'  # a name made above: lowercase letters, digits and underscores
    _superuser(
        pgtenancy_server,
        "CREATE ROLE " + quoted + " LOGIN BYPASSRLS PASSWORD '" + pgtenancy_roles.password + "'",
    )
    name = "pgt_saas_" + secrets.token_hex(3)
    build = alembic_schema(
        config_file=ROOT / "examples/saas/alembic.ini", x_arguments=["admin_role=" + admin]
    )
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SAAS_APP_PASSWORD", pgtenancy_roles.password)  # the app role exists: it is kept
            create_template(pgtenancy_server, pgtenancy_roles, name, build)
        yield Saas(name, pgtenancy_server, pgtenancy_roles, admin)
    finally:
        drop_database(pgtenancy_server, name)
        _superuser(pgtenancy_server, "DROP ROLE " + quoted)


@pytest.fixture
async def app(saas: Saas) -> AsyncIterator[FastAPI]:
    settings = Settings(
        database_url=saas.url(saas.roles.app),
        admin_database_url=saas.url(saas.admin),
        jwt_key=JWT_KEY,
        job_signing_key=secrets.token_hex(16),
    )
    application = create_app(settings)
    yield application
    await application.state.database.dispose()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://saas") as client:
        yield client


def token(user: uuid.UUID, **claims: Any) -> dict[str, str]:
    """Authorization headers for ``user``, as the identity provider would sign them."""
    payload = {"sub": str(user), "email": f"{user.hex}@example.com", "exp": int(time.time()) + 600, **claims}
    return {"Authorization": "Bearer " + jwt.encode(payload, JWT_KEY, algorithm="HS256")}


async def sign_up(client: httpx.AsyncClient, user: uuid.UUID, organization: str) -> str:
    response = await client.post("/signup", json={"organization": organization}, headers=token(user))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def post(client: httpx.AsyncClient, user: uuid.UUID, path: str, body: dict[str, Any]) -> Any:
    response = await client.post(path, json=body, headers=token(user))
    assert response.status_code in (201, 202), response.text
    return response.json()


async def test_sign_up_creates_an_organization_owned_by_its_first_user(client: httpx.AsyncClient) -> None:
    alice, stranger = uuid.uuid4(), uuid.uuid4()
    org = await sign_up(client, alice, "Acme")
    response = await client.get(f"/orgs/{org}", headers=token(alice))
    assert response.json() == {"id": org, "name": "Acme", "role": "owner"}
    assert (await client.get(f"/orgs/{org}", headers=token(stranger))).status_code == 403
    assert (await client.get(f"/orgs/{org}")).status_code == 401
    assert (await client.post("/signup", json={"organization": "X"})).status_code == 401
    forged = {"Authorization": "Bearer " + jwt.encode({"sub": str(alice), "exp": 2**31}, "x" * 32, "HS256")}
    assert (await client.post("/signup", json={"organization": "X"}, headers=forged)).status_code == 401


def test_the_app_role_reaches_tenants_only_through_the_functions(saas: Saas) -> None:
    engine = create_engine(saas.url(saas.roles.app, "postgresql+psycopg"), poolclass=NullPool)

    def refused(conn: Connection, statement: str) -> None:
        with pytest.raises(ProgrammingError, match="permission denied"), conn.begin_nested():
            conn.exec_driver_sql(statement)

    with engine.connect() as conn, conn.begin():
        bind = text("SELECT set_config('app.current_tenant_id', :t, true)")
        mine = conn.execute(text("SELECT sign_up('Mine', :u, :e)"), {"u": uuid.uuid4(), "e": "m@x.io"})
        tenant = mine.scalar_one()
        assert conn.execute(text("SELECT current_setting('app.current_tenant_id', true)")).scalar() in (
            None,
            "",
        )
        for statement in ("SELECT * FROM tenants", "SELECT * FROM users", "UPDATE tenants SET name = 'x'"):
            refused(conn, statement)
        assert conn.execute(text("SELECT * FROM current_tenant()")).all() == []  # no tenant bound
        conn.execute(bind, {"t": str(tenant)})
        assert [row.name for row in conn.execute(text("SELECT * FROM current_tenant()"))] == ["Mine"]
        other = conn.execute(text("SELECT sign_up('Other', :u, :e)"), {"u": uuid.uuid4(), "e": "o@x.io"})
        assert other.scalar_one() != tenant  # a fresh tenant every time, never an existing one
        bound = conn.execute(text("SELECT current_setting('app.current_tenant_id')")).scalar_one()
        assert bound == str(tenant)  # sign_up restored the caller's tenant on return
        assert conn.execute(text("SELECT count(*) FROM memberships")).scalar_one() == 1  # Mine's owner only
    engine.dispose()


async def test_members_act_only_in_their_own_organization(client: httpx.AsyncClient) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    org_a, org_b = await sign_up(client, alice, "A"), await sign_up(client, bob, "B")
    work: dict[str, tuple[int, int]] = {}
    for user, org in ((alice, org_a), (bob, org_b)):
        project = await post(client, user, f"/orgs/{org}/projects", {"name": "launch " + org})
        task = await post(client, user, f"/orgs/{org}/projects/{project['id']}/tasks", {"title": "plan"})
        comment = await post(client, user, f"/orgs/{org}/tasks/{task['id']}/comments", {"body": "go"})
        assert comment["tenant_id"] == org and comment["author_id"] == str(user)  # a SQLModel answer
        work[org] = (project["id"], task["id"])
    projects = (await client.get(f"/orgs/{org_a}/projects", headers=token(alice))).json()
    assert projects == [{"id": work[org_a][0], "name": "launch " + org_a}]
    assert (await client.get(f"/orgs/{org_b}/projects", headers=token(alice))).status_code == 403
    b_project, b_task = work[org_b]
    response = await client.post(
        f"/orgs/{org_a}/projects/{b_project}/tasks", json={"title": "sneak"}, headers=token(alice)
    )
    assert response.status_code == 409  # B's project does not exist for A: the composite key refuses
    for path in (f"/projects/{b_project}/tasks", f"/tasks/{b_task}/comments"):
        assert (await client.get(f"/orgs/{org_a}" + path, headers=token(alice))).json() == []


async def test_owners_add_members_who_then_act_in_the_organization(client: httpx.AsyncClient) -> None:
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    org = await sign_up(client, alice, "A")
    await sign_up(client, bob, "B")
    await post(client, alice, f"/orgs/{org}/members", {"user_id": str(bob), "role": "member"})
    assert (await client.get(f"/orgs/{org}/projects", headers=token(bob))).status_code == 200
    refused = await client.post(
        f"/orgs/{org}/members", json={"user_id": str(carol), "role": "member"}, headers=token(bob)
    )
    assert refused.status_code == 403  # a member does not add members
    unknown = await client.post(
        f"/orgs/{org}/members", json={"user_id": str(carol), "role": "member"}, headers=token(alice)
    )
    assert unknown.status_code == 409  # carol never signed up
    members = (await client.get(f"/orgs/{org}/members", headers=token(bob))).json()
    assert sorted((m["user_id"], m["role"]) for m in members) == sorted(
        [(str(alice), "owner"), (str(bob), "member")]
    )


async def test_a_job_runs_as_the_requesting_tenant_only(client: httpx.AsyncClient, app: FastAPI) -> None:
    worker: Worker = app.state.worker
    alice, bob = uuid.uuid4(), uuid.uuid4()
    org_a, org_b = await sign_up(client, alice, "A"), await sign_up(client, bob, "B")
    projects = {}
    for user, org in ((alice, org_a), (bob, org_b)):
        projects[org] = (await post(client, user, f"/orgs/{org}/projects", {"name": "p"}))["id"]
        for title in ("one", "two"):
            await post(client, user, f"/orgs/{org}/projects/{projects[org]}/tasks", {"title": title})
    await post(client, alice, f"/orgs/{org_a}/projects/{projects[org_b]}/complete", {})  # B's project id
    await post(client, alice, f"/orgs/{org_a}/projects/{projects[org_a]}/complete", {})
    outcomes = await worker.drain()
    assert [(str(o.tenant), o.result) for o in outcomes] == [(org_a, 0), (org_a, 2)]
    for user, org, done in ((alice, org_a, True), (bob, org_b, False)):
        tasks = (await client.get(f"/orgs/{org}/projects/{projects[org]}/tasks", headers=token(user))).json()
        assert [task["done"] for task in tasks] == [done, done]
    queued = await post(client, alice, f"/orgs/{org_a}/projects/{projects[org_b]}/complete", {})
    job = worker.queue.get_nowait()
    assert job.id == queued["job_id"]
    job.headers[BINDING] = "tenant:" + org_b  # re-pointed on the broker: the signature no longer fits
    outcome = await worker.process(job)
    assert outcome.refused and outcome.result is None


async def test_the_worker_runs_jobs_while_the_app_runs(client: httpx.AsyncClient, app: FastAPI) -> None:
    worker: Worker = app.state.worker
    alice = uuid.uuid4()
    org = await sign_up(client, alice, "A")
    project = (await post(client, alice, f"/orgs/{org}/projects", {"name": "p"}))["id"]
    await post(client, alice, f"/orgs/{org}/projects/{project}/tasks", {"title": "one"})
    async with app.router.lifespan_context(app):  # starts the worker's loop, with no tenant bound
        queued = await post(client, alice, f"/orgs/{org}/projects/{project}/complete", {})
        for _ in range(200):
            if worker.outcomes:
                break
            await asyncio.sleep(0.01)
    (outcome,) = worker.outcomes
    assert (outcome.job.id, str(outcome.tenant), outcome.result) == (queued["job_id"], org, 1)


async def test_staff_read_every_organization_on_the_admin_engine(client: httpx.AsyncClient) -> None:
    alice, bob, staff = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    orgs = {await sign_up(client, alice, "A"), await sign_up(client, bob, "B")}
    response = await client.get("/admin/tenants", headers=token(staff, staff=True))
    assert response.status_code == 200
    assert orgs <= {row["id"] for row in response.json()}
    report = (await client.get("/admin/report", headers=token(staff, staff=True))).json()
    assert report["tenants"] >= 2 and report["users"] >= 2
    assert (await client.get("/admin/tenants", headers=token(alice))).status_code == 403
    assert (await client.get("/admin/tenants")).status_code == 401


def test_the_migrated_database_passes_the_audit(saas: Saas) -> None:
    admin_url = saas.server.url(database=saas.name)
    report = audit(admin_url, role=saas.roles.app, admin_roles=[saas.admin])
    assert report.failing == (), [(f.rule, f.object, f.message) for f in report.failing]
    assert report.summary["tenant_tables"] == 4
