"""Every fenced block of README.md and docs/*.md runs against the real test database, or says why not.

CONTRIBUTING: how a block in the docs is run, and how to mark one that needs help.

- ``python``: run as a script by the project's interpreter; a block with ``given`` names (below) is
  executed in the test's process instead. ``sh``/``bash``: run by bash with ``set -euo
  pipefail``, the project's ``bin/`` first on ``PATH``, in a scratch directory holding a copy of
  ``alembic.ini`` and ``migrations/``. ``console``: the same for each ``$ `` line. A ``pip install`` line
  is not run: the extras it names must exist in ``pyproject.toml``. ``sql``: executed as the owner role in
  a fresh schema, rolled back. ``json``, ``toml``, ``ini``: parsed.
- Markers are HTML comments on the lines right above the fence (invisible on GitHub), one per line:

  - ``<!-- snippet: fill TEXT=NAME ... -->``: a fill-in. Each ``TEXT`` (a whole word: ``app`` does not
    match ``app_role``) is replaced before the block runs by the value ``NAME`` of the test run (see
    ``FILLS``). A URL keeps the block's own driver and query options; in shell blocks the value is passed
    as an environment variable.
  - ``<!-- snippet: given NAME ... -->``: names the reader brings. In Python, the test defines them (see
    ``GIVEN``); a block given ``op`` gets an offline Alembic ``op`` and has its ``upgrade()`` and
    ``downgrade()`` called; ``test_*`` functions a block defines are called with given values as their
    arguments. In SQL, each name is a tenant table ``(tenant_id uuid, id bigint, body text)`` created first.
  - ``<!-- snippet: pytest -->``: the block is a test module of a user's suite, run by pytest with
    pgtenancy's plugin against the test server; it must pass.
  - ``<!-- snippet: not-run because REASON -->``: the block cannot run here; the reason is required.

- A block another test already runs is listed in ``PROVEN`` with that test, by the block's id
  (``file#heading``, ``.2`` for the heading's second block); a block that quotes a file of
  ``examples/`` (first line ``# examples/NAME.py``) must equal it.

An unmarked block that is neither run nor proven fails the test: nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import configparser
import inspect
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tomllib
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import jwt
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

from pgtenancy import instrument
from pgtenancy.sqlgen import render_enable_sql, render_grant_sql
from pgtenancy.testing import TestDatabase

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "console"}
TENANT_A, TENANT_B = uuid.UUID(int=0xD0C1), uuid.UUID(int=0xD0C2)
MEMBER, OUTSIDER = uuid.UUID(int=0xD0C3), uuid.UUID(int=0xD0C4)

# block id -> the test that runs (or compares and runs) the block; checked to exist
PROVEN: dict[str, str] = {
    "README.md#set-up": "tests/test_demo.py::test_demo_walkthrough_passes_every_step",
    "README.md#set-up.2": "tests/test_readme.py::test_ci_runs_the_readme_test_command_verbatim",
    "README.md#1-instrument-an-engine-and-bind-a-tenant": (
        "tests/test_examples.py::test_models_and_quickstart_examples"
    ),
    "README.md#2-declare-tenant-tables": "tests/test_examples.py::test_models_and_quickstart_examples",
    "README.md#3-add-the-middleware--starlette": "tests/test_examples.py::test_web_app_examples",
    "README.md#4--or-fastapi": "tests/test_examples.py::test_web_app_examples",
    "README.md#5-write-the-migration": (
        "tests/test_examples.py::test_migration_example_upgrades_and_downgrades"
    ),
    "README.md#6-test-your-app-with-the-pytest-plugin": (
        "tests/test_examples.py::test_isolation_test_example_runs_in_a_users_suite"
    ),
    "README.md#cross-tenant-work": "tests/test_examples.py::test_admin_example_sees_every_tenant",
    "docs/audit.md#ignore-entries-with-a-reason": (
        "tests/test_audit_ci.py::test_the_ci_commands_of_the_docs_run"
    ),
    "docs/audit.md#a-baseline": "tests/test_audit_ci.py::test_the_ci_commands_of_the_docs_run",
    "docs/audit.md#on-the-command-line": "tests/test_audit_ci.py::test_the_ci_commands_of_the_docs_run",
    "docs/audit.md#sarif": "tests/test_audit_ci.py::test_the_ci_commands_of_the_docs_run",
    "docs/audit.md#admin-roles": "tests/test_audit_ci.py::test_the_ci_commands_of_the_docs_run",
    "docs/audit.md#auditing-the-migrations": (
        "tests/test_audit_ci.py::test_the_migrations_command_of_the_docs_audits_the_example_clean"
    ),
    "docs/models.md#relationships-over-composite-tenant-keys": (
        "tests/test_orm.py::test_documented_relationships_write_and_read_each_tenants_graph"
    ),
    "docs/jobs.md#celery.2": "tests/test_jobs_celery.py::test_the_docs_examples_run_in_the_celery_worker",
    "docs/jobs.md#celery.3": "tests/test_jobs_celery.py::test_the_docs_examples_run_in_the_celery_worker",
    "docs/jobs.md#arq.2": "tests/test_jobs_arq.py::test_the_docs_examples_run_in_an_arq_worker_process",
    "docs/jobs.md#arq.3": "tests/test_jobs_arq.py::test_the_docs_examples_run_in_an_arq_worker_process",
}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and the markers above it."""

    id: str
    language: str
    body: str
    markers: tuple[str, ...]

    def directives(self, keyword: str) -> list[list[str]]:
        """The arguments of every marker that starts with ``keyword``."""
        found = []
        for marker in self.markers:
            words = shlex.split(marker)
            if words[0] == keyword:
                found.append(words[1:])
        return found

    @property
    def not_run(self) -> str | None:
        reasons = [" ".join(words) for words in self.directives("not-run")]
        return reasons[0] if reasons else None

    @property
    def given(self) -> list[str]:
        return [name for words in self.directives("given") for name in words]


_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")  # indented too: a block inside a list item
_MARKER = re.compile(r"^<!-- snippet: (.+?) -->$")
_KEYWORDS = {"fill", "given", "pytest", "not-run"}


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def parse(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with their ids and markers; a malformed marker fails."""
    name = path.relative_to(ROOT).as_posix()
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    heading, counts = "", dict[str, int]()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = slug(line.lstrip("#"))
        fence = _FENCE.match(line)
        if fence is None:
            index += 1
            continue
        indent = fence.group(1)
        end = lines.index(indent + "```", index + 1)
        markers: list[str] = []
        above = index - 1
        while above >= 0 and (lines[above].strip() == "" or _MARKER.match(lines[above].strip())):
            if lines[above].strip():
                markers.insert(0, _MARKER.match(lines[above].strip()).group(1))  # type: ignore[union-attr]
            above -= 1
        for marker in markers:
            keyword = shlex.split(marker)[0]
            assert keyword in _KEYWORDS, f"{name}:{index + 1}: unknown snippet marker {marker!r}"
            if keyword == "not-run":
                assert marker.startswith("not-run because "), f"{name}:{index + 1}: say why: {marker!r}"
        counts[heading] = counts.get(heading, 0) + 1
        suffix = "" if counts[heading] == 1 else f".{counts[heading]}"
        body = "\n".join(line.removeprefix(indent) for line in lines[index + 1 : end]) + "\n"
        blocks.append(Block(f"{name}#{heading}{suffix}", fence.group(2), body, tuple(markers)))
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in DOCUMENTS for block in parse(path)]


BLOCKS = {block.id: block for block in all_blocks()}


# ----------------------------------------------------------------------------------- fill-ins and givens


@dataclass
class Run:
    """What one block runs with: the module's database, a scratch directory, and what to clean up."""

    database: TestDatabase
    directory: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    _values: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        """A fill value by name, made once per block (see ``FILLS``)."""
        if name not in self._values:
            assert name in FILLS, f"unknown fill name {name!r}; known: {sorted(FILLS)}"
            self._values[name] = FILLS[name](self)
        return self._values[name]

    def url(self, name: str, literal: str) -> str:
        """The URL ``name``, keeping the documented literal's driver and query options."""
        url: URL = self.value(name)
        if "://" in literal:
            documented = make_url(literal)
            url = url.set(drivername=documented.drivername).update_query_dict(dict(documented.query))
        else:
            url = url.set(drivername="postgresql")  # libpq's form, for psql and the CLI
        return url.render_as_string(hide_password=False)

    def fill(self, block: Block) -> tuple[str, dict[str, str]]:
        """The block's text with its fill-ins replaced; for shell blocks, the environment they read."""
        pairs = [word.rsplit("=", 1) for words in block.directives("fill") for word in words]
        values = {}
        for literal, name in pairs:
            values[literal] = self.url(name, literal) if name.endswith("_URL") else str(self.value(name))
        if not values:
            return block.body, {}
        environment: dict[str, str] = {}

        used: set[str] = set()

        def replace(match: re.Match[str]) -> str:
            used.add(match.group(0))
            if block.language not in SHELL:
                return values[match.group(0)]
            variable = f"PGT_FILL_{len(environment)}"
            environment[variable] = values[match.group(0)]
            return "${" + variable + "}"

        alternatives = "|".join(re.escape(literal) for literal in sorted(values, key=len, reverse=True))
        pattern = re.compile(r"(?<![\w$])(?:" + alternatives + r")(?!\w)")
        body = pattern.sub(replace, block.body)
        assert used == set(values), f"{block.id}: fill-ins not in the block: {set(values) - used}"
        return body, environment

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


def _superuser(run: Run, *statements: str) -> None:
    engine = create_engine(run.database.server.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _quote(name: str) -> str:
    return str(postgresql.dialect().identifier_preparer.quote(name))  # type: ignore[no-untyped-call]


def _scratch_database(run: Run) -> URL:
    """An empty database for migrations to build, as the superuser (they create roles); dropped after."""
    name = "pgt_docs_scratch_" + secrets.token_hex(3)
    _superuser(run, "CREATE DATABASE " + _quote(name))
    run.cleanups.append(lambda: _superuser(run, "DROP DATABASE IF EXISTS " + _quote(name) + " WITH (FORCE)"))
    return run.database.server.url(database=name)


def _new_role(run: Run) -> str:
    """A role name the block creates (a migration's app role); dropped after the block's databases."""
    name = "pgt_docs_role_" + secrets.token_hex(3)
    run.cleanups.insert(0, lambda: _superuser(run, "DROP ROLE IF EXISTS " + _quote(name)))
    return name


FILLS: dict[str, Callable[[Run], Any]] = {
    "APP_URL": lambda run: run.database.url("app"),  # the module's database as the app role
    "OWNER_URL": lambda run: run.database.url("owner"),  # ... as the schema owner
    "ADMIN_URL": lambda run: run.database.url("admin"),  # ... as the server's superuser
    "MIGRATOR_URL": _scratch_database,  # an empty database to migrate, as the superuser
    "APP_ROLE": lambda run: run.database.roles.app,
    "NEW_ROLE": _new_role,
    "NEW_PASSWORD": lambda run: "pw-" + secrets.token_hex(8),
    "ALEMBIC_INI": lambda run: ROOT / "alembic.ini",  # the example application's Alembic config
}


def _offline_op(run: Run) -> Any:
    import pgtenancy.alembic  # noqa: F401 (as a migration's env.py does: registers the operations)

    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": StringIO()}
    )
    return Operations(context)


def _public_key_pem(run: Run) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def _memberships(subject: str) -> list[str]:
    """The tenants a user belongs to, as an application may store them: in upper case."""
    return [str(MEMBER).upper()] if subject == "alice" else []


class _Base(DeclarativeBase):
    pass


def _app_engine(run: Run) -> Engine:
    engine = instrument(create_engine(run.database.url("app"), poolclass=NullPool))
    run.cleanups.append(engine.dispose)
    return engine


GIVEN: dict[str, Callable[[Run], Any]] = {
    "op": _offline_op,
    "public_key_pem": _public_key_pem,
    "fetch_key_set": lambda run: lambda: {"keys": []},
    "memberships": lambda run: _memberships,
    "jwt_key": lambda run: "a-test-secret-of-at-least-32-bytes!",
    "Base": lambda run: type("Base", (_Base,), {"__abstract__": True}),
    "app_engine": _app_engine,
    "admin_url": lambda run: run.database.url("admin"),
    "TENANT_A": lambda run: TENANT_A,
    "TENANT_B": lambda run: TENANT_B,
}


# ----------------------------------------------------------------------------------------- the runners


def run_python(block: Block, run: Run) -> dict[str, Any]:
    """Execute a Python block: as a script of its own, or in this process with the names it is given.

    In this process its migration and test functions are called, and its namespace is returned.
    """
    body, _ = run.fill(block)
    if not block.given:
        script = run.directory / "snippet.py"
        script.write_text(body)
        result = subprocess.run(
            [sys.executable, str(script)], cwd=run.directory, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (block.id, result.stdout, result.stderr)
        return {}
    module = types.ModuleType("snippet")  # a real module: SQLAlchemy resolves annotations through it
    namespace = module.__dict__
    for name in block.given:
        assert name in GIVEN, f"{block.id}: unknown given name {name!r}; known: {sorted(GIVEN)}"
        namespace[name] = GIVEN[name](run)
    sys.modules[module.__name__] = module
    try:
        exec(compile(body, block.id, "exec"), namespace)  # noqa: S102 - the documentation's own code
    finally:
        del sys.modules[module.__name__]
    if "op" in block.given:
        namespace["upgrade"]()
        namespace["downgrade"]()
    for name, function in list(namespace.items()):
        if name.startswith("test_") and inspect.isfunction(function):
            function(
                **{parameter: namespace[parameter] for parameter in inspect.signature(function).parameters}
            )
    return namespace


def pip_extras(line: str) -> None:
    """A ``pip install 'pgtenancy[a,b]'`` line names only extras that pyproject.toml declares."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    requirements = [word for word in shlex.split(line) if word.startswith("pgtenancy[")]
    assert requirements, f"a pip install line that installs no pgtenancy extra: {line!r}"
    for requirement in requirements:
        extras = requirement[len("pgtenancy[") : requirement.index("]")].split(",")
        assert set(extras) <= set(declared), f"unknown extras in {line!r}: {set(extras) - set(declared)}"


def run_shell(block: Block, run: Run) -> None:
    """Run a shell block with bash (a console block: its ``$`` lines); ``pip install`` lines are checked."""
    body, environment = run.fill(block)
    lines = body.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    script = []
    for line in lines:
        if line.startswith("pip install "):
            pip_extras(line)
        else:
            script.append(line)
    if not any(line.strip() for line in script):
        return
    shutil.copy(ROOT / "alembic.ini", run.directory / "alembic.ini")
    shutil.copytree(ROOT / "migrations", run.directory / "migrations", dirs_exist_ok=True)
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(script)],  # noqa: S607 - the reader's shell
        cwd=run.directory,
        env={**os.environ, "PATH": path, **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (block.id, result.stdout, result.stderr)


def run_sql(block: Block, run: Run) -> None:
    """Execute a SQL block as the owner in a fresh schema holding the given tables; roll it back."""
    body, _ = run.fill(block)
    engine = create_engine(run.database.url("owner"), poolclass=NullPool)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            conn.exec_driver_sql("CREATE SCHEMA pgt_docs_snippet")
            conn.exec_driver_sql("SET LOCAL search_path = pgt_docs_snippet")
            for table in block.given:
                conn.exec_driver_sql(
                    "CREATE TABLE " + _quote(table) + " (tenant_id uuid NOT NULL, id bigint, body text)"
                )
            conn.exec_driver_sql(body)
            transaction.rollback()
    finally:
        engine.dispose()


def run_pytest(block: Block, run: Run, pytester: pytest.Pytester) -> None:
    """Run the block as a user's test module, with pgtenancy's plugin, against the test server."""
    body, _ = run.fill(block)
    pytester.makepyfile(test_snippet=body)
    dsn = run.database.server.admin_url.render_as_string(hide_password=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pgtenancy-dsn", dsn)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1 and set(outcomes) <= {"passed", "warnings"}, result.stdout.str()


def run_parsed(block: Block, run: Run) -> None:
    """Parse a data block: JSON, TOML or an ini file."""
    body, _ = run.fill(block)
    if block.language == "json":
        json.loads(body)
    elif block.language == "toml":
        tomllib.loads(body)
    else:
        configparser.ConfigParser().read_string(body)


# ------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def workspace(pgtenancy_database: TestDatabase) -> TestDatabase:
    """The module's database with the tables the docs name: ``invoices`` and ``billing.invoices``."""
    engine = create_engine(pgtenancy_database.url("owner"), poolclass=NullPool)
    app = pgtenancy_database.roles.app
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA billing")
        conn.exec_driver_sql("GRANT USAGE ON SCHEMA billing TO " + _quote(app))
        for schema in (None, "billing"):
            conn.exec_driver_sql(
                "CREATE TABLE " + ("billing." if schema else "") + "invoices (tenant_id uuid NOT NULL, "
                "id bigint GENERATED ALWAYS AS IDENTITY, body text NOT NULL, PRIMARY KEY (tenant_id, id))"
            )
            conn.exec_driver_sql(render_enable_sql("invoices", schema=schema))
            conn.exec_driver_sql(render_grant_sql(app, "invoices", schema=schema))
    engine.dispose()
    return pgtenancy_database


@pytest.fixture
def run(workspace: TestDatabase, tmp_path: Path) -> Iterator[Run]:
    snippet_run = Run(workspace, tmp_path)
    yield snippet_run
    snippet_run.close()


def test_every_document_has_blocks_and_every_proven_block_exists() -> None:
    assert {path.name for path in DOCUMENTS} >= {"README.md", "asgi.md", "migrations.md", "testing.md"}
    for block_id, proof in PROVEN.items():
        assert block_id in BLOCKS, f"PROVEN names {block_id!r}, which is no block of the docs"
        module, _, name = proof.partition("::")
        assert re.search(rf"^(async )?def {name}\(", (ROOT / module).read_text(), re.M), proof


@pytest.mark.parametrize("block_id", sorted(BLOCKS))
def test_the_block_runs(block_id: str, run: Run, pytester: pytest.Pytester) -> None:
    block = BLOCKS[block_id]
    first = block.body.partition("\n")[0]
    if block.not_run is not None:
        assert block_id not in PROVEN, f"{block_id} is both proven and not run"
        return
    if block_id in PROVEN:
        if quoted := re.fullmatch(r"# (examples/[\w/]+\.py)", first):
            assert (ROOT / quoted.group(1)).read_text() == block.body.partition("\n")[2]
        return
    if block.directives("pytest"):
        run_pytest(block, run, pytester)
    elif block.language == "python":
        run_python(block, run)
    elif block.language in SHELL:
        run_shell(block, run)
    elif block.language == "sql":
        run_sql(block, run)
    elif block.language in {"json", "toml", "ini"}:
        run_parsed(block, run)
    else:
        pytest.fail(f"{block_id}: a {block.language or 'plain'} block must be run, proven or marked not-run")


async def test_the_access_check_lets_members_in_and_keeps_others_out(run: Run) -> None:
    """docs/asgi.md's access check, on the claims a JWTClaimResolver verified, with ids in any case."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from pgtenancy import current_tenant_id

    namespace = await asyncio.to_thread(run_python, BLOCKS["docs/asgi.md#access-check"], run)

    async def tenant(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(current_tenant_id()))

    app = Starlette(routes=[Route("/", tenant)], middleware=[namespace["middleware"]])
    token = jwt.encode({"sub": "alice", "exp": 2**31}, GIVEN["jwt_key"](run), algorithm="HS256")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://docs") as client:

        async def get(tenant_id: uuid.UUID, **headers: str) -> httpx.Response:
            return await client.get("/", headers={"X-Tenant-ID": str(tenant_id), **headers})

        member = await get(MEMBER, Authorization="Bearer " + token)
        outsider = await get(OUTSIDER, Authorization="Bearer " + token)
        anonymous = await get(MEMBER)
    assert (member.status_code, member.text) == (200, str(MEMBER))
    assert (outsider.status_code, anonymous.status_code) == (403, 401)
