"""The demo's walkthrough: the example app driven in-process, each step saying what it proves."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import jwt
from starlette.applications import Starlette

from pgtenancy import tenant_context
from pgtenancy.demo.database import TENANTS
from pgtenancy.example.worker import Worker

__all__ = ["Step", "token", "walk", "walk_jobs"]


@dataclass(frozen=True)
class Step:
    """One claim of the walkthrough and whether the system behaved as it says."""

    claim: str
    ok: bool
    detail: str


def token(key: str, tenant: int, *, ttl: int = 3600) -> str:
    """A signed token naming ``tenant``, as an identity provider would issue it."""
    return jwt.encode(
        {"tenant_id": tenant, "sub": TENANTS.get(tenant, "user"), "exp": int(time.time()) + ttl}, key
    )


async def walk(app: Starlette, key: str, audit: Callable[[], Awaitable[Step]]) -> list[Step]:
    """Call the unfiltered endpoints as each tenant, without a token, with a forged one, across tenants."""
    headers = {tenant: {"Authorization": "Bearer " + token(key, tenant)} for tenant in TENANTS}
    transport = httpx.ASGITransport(app=app)
    steps = []
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        seen, ids = {}, {}
        for tenant, name in TENANTS.items():
            response = await client.get("/projects", headers=headers[tenant])
            rows = response.json() if response.status_code == 200 else []
            seen[tenant] = {row["name"] for row in rows}
            ids[tenant] = [row["id"] for row in rows]
            steps.append(
                Step(
                    f"GET /projects as {name}: no tenant filter in the handler, only {name}'s rows come back",
                    response.status_code == 200
                    and bool(rows)
                    and all(row["tenant_id"] == tenant for row in rows),
                    ", ".join(sorted(seen[tenant])) or f"status {response.status_code}",
                )
            )
        steps.append(
            Step(
                "the two tenants share no row",
                not (seen[1] & seen[2]),
                f"{len(seen[1])} vs {len(seen[2])} projects",
            )
        )
        response = await client.get("/projects")
        steps.append(
            Step("a request with no token is refused", response.status_code == 401, _status(response))
        )
        forged = {"Authorization": "Bearer " + token("a-forger-does-not-know-the-signing-key", 2)}
        response = await client.get("/projects", headers=forged)
        steps.append(
            Step("a token with a forged signature is refused", response.status_code == 401, _status(response))
        )
        response = await client.post(
            "/projects", headers=headers[1], json={"name": "planted", "tenant_id": 2}
        )
        steps.append(
            Step(
                "acme writing a row for globex is rejected by the database (WITH CHECK)",
                response.status_code == 403,
                _status(response),
            )
        )
        foreign = ids[2][0] if ids[2] else 0
        response = await client.post("/tasks", headers=headers[1], json={"project_id": foreign, "title": "x"})
        steps.append(
            Step(
                "acme attaching a task to globex's project is refused: the foreign key includes the tenant",
                response.status_code == 409,
                _status(response),
            )
        )
        response = await client.get("/projects", headers=headers[2])
        planted = any(row["name"] == "planted" for row in response.json())
        steps.append(
            Step("globex's data is unchanged", response.status_code == 200 and not planted, _status(response))
        )
    steps.append(await audit())
    return steps


async def walk_jobs(worker: Worker, projects: dict[int, int]) -> list[Step]:
    """Queue jobs from a tenant's request and from the nightly fan-out; tamper with one; run the worker.

    :param projects: each tenant's number of projects, as the superuser counts them.
    """
    steps = []
    async with tenant_context(1):
        job = worker.enqueue("count_projects")  # what acme's request handler would do
    (outcome,) = await worker.drain()
    steps.append(
        Step(
            "a job queued by acme's request runs bound to acme: it counts acme's projects only",
            str(outcome.tenant) == "1" and outcome.result == projects[1],
            f"tenant {outcome.tenant}: {outcome.result} of {sum(projects.values())} projects",
        )
    )
    await worker.nightly(TENANTS)
    outcomes = await worker.drain()
    seen = {str(o.tenant): o.result for o in outcomes}  # the tenant as the header carried it
    steps.append(
        Step(
            "the nightly fan-out runs one job per tenant, each seeing only its own tenant's rows",
            len(outcomes) == len(TENANTS) and seen == {str(t): projects[t] for t in TENANTS},
            ", ".join(f"tenant {tenant}: {count} projects" for tenant, count in seen.items()),
        )
    )
    async with tenant_context(1):
        job = worker.enqueue("count_projects")
    job.headers["pgtenancy-binding"] = "tenant:2"  # someone with access to the broker re-points it
    (outcome,) = await worker.drain()
    steps.append(
        Step(
            "a job whose tenant header was changed on the way is refused before it runs",
            outcome.refused is not None and outcome.result is None,
            outcome.refused or "it ran",
        )
    )
    return steps


def _status(response: httpx.Response) -> str:
    detail = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        detail = ": " + str(response.json().get("title", ""))
    return f"{response.status_code}{detail}"
