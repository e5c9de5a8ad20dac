"""``pgtenancy check``: exit codes, one JSON object on stdout, a readable table."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from pgtenancy.cli.check import register
from tests import audit_sandbox
from tests.audit_sandbox import Sandbox
from tests.test_audit_rules import build_clean, rls_off

pytestmark = pytest.mark.usefixtures("pgtenancy_database")
sandbox = audit_sandbox.sandbox  # the fixture


@pytest.fixture
def check() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def main() -> None:
        """Keep ``check`` a named sub-command, as in the real command line."""

    return app


def run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["check", *args])


def admin_args(box: Sandbox, *extra: str) -> list[str]:
    dsn = box.database.url("admin").render_as_string(hide_password=False)
    return [dsn, "--role", box.app, "--schema", box.schema, *extra]


def test_clean_schema_exits_zero_with_one_json_object(check: typer.Typer, sandbox: Sandbox) -> None:
    build_clean(sandbox)
    result = run(check, *admin_args(sandbox, "--format", "json"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    assert set(report) == {"findings", "summary"}
    assert report["summary"]["errors"] == report["summary"]["warnings"] == 0
    assert all(f["severity"] == "info" for f in report["findings"])


def test_leaky_schema_exits_one_and_names_the_rule(check: typer.Typer, sandbox: Sandbox) -> None:
    rls_off(sandbox)
    result = run(check, *admin_args(sandbox, "--format", "json"))
    assert result.exit_code == 1, result.output
    findings = json.loads(result.stdout)["findings"]
    first = next(f for f in findings if f["rule"] == "PGT001")
    assert first["severity"] == "error" and first["object"] == "table " + sandbox.schema + ".t"
    assert "ENABLE ROW LEVEL SECURITY" in first["fix"]
    confirmed = [f for f in findings if f.get("confirmed")]
    assert confirmed and all("reproduction" in f for f in confirmed)


def test_no_dynamic_has_no_confirmed_findings(check: typer.Typer, sandbox: Sandbox) -> None:
    rls_off(sandbox)
    result = run(check, *admin_args(sandbox, "--format", "json", "--no-dynamic"))
    assert result.exit_code == 1
    assert not any(f.get("confirmed") for f in json.loads(result.stdout)["findings"])


def test_text_output_is_a_table(check: typer.Typer, sandbox: Sandbox) -> None:
    rls_off(sandbox)
    result = run(check, *admin_args(sandbox, "--no-dynamic"))
    assert result.exit_code == 1
    assert "PGT001" in result.stdout and sandbox.schema + ".t" in result.stdout
    assert "errors" in result.stdout.splitlines()[-1]


def test_repeated_schema_options_audit_both(check: typer.Typer, sandbox: Sandbox) -> None:
    rls_off(sandbox)
    result = run(check, *admin_args(sandbox, "--schema", "public", "--format", "json", "--no-dynamic"))
    summary = json.loads(result.stdout)["summary"]
    assert summary["schemas"] == [sandbox.schema, "public"]
    assert summary["tenant_tables"] == 3  # t, plus notes and int_notes of the shared schema


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"role": "no_such_role_x"}, id="unknown-role"),
        pytest.param({"setting": "not a setting"}, id="bad-setting"),
        pytest.param({"database": "no_such_database_x"}, id="connection"),
        pytest.param({"dsn": "not-a-url"}, id="bad-url"),
    ],
)
def test_usage_and_connection_errors_exit_two(check: typer.Typer, sandbox: Sandbox, change: dict) -> None:
    url = sandbox.database.url("admin")
    if "database" in change:
        url = url.set(database=change["database"])
    dsn = change.get("dsn", url.render_as_string(hide_password=False))
    args = [
        dsn,
        "--role",
        change.get("role", sandbox.app),
        "--setting",
        change.get("setting", "app.current_tenant_id"),
    ]
    result = run(check, *args, "--format", "json")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "pgtenancy check:" in result.stderr


def test_missing_dsn_is_a_usage_error(check: typer.Typer) -> None:
    assert run(check).exit_code == 2


def test_sealed_declares_that_every_tenant_table_must_be_sealed(
    check: typer.Typer, sandbox: Sandbox, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.table()  # isolated by the plain setting, clean unless sealing is declared
    assert run(check, *admin_args(sandbox, "--no-dynamic")).exit_code == 0
    result = run(check, *admin_args(sandbox, "--sealed", "--format", "json"))
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    failing = {(f["rule"], f["object"]) for f in report["findings"] if f["severity"] != "info"}
    assert ("PGT052", "table " + sandbox.schema + ".t") in failing
    assert ("PGT108", "table " + sandbox.schema + ".t") in failing  # confirmed: the setting alone opens it
    assert "PGT053" in {rule for rule, _ in failing} and report["summary"]["sealed"] is True
    (tmp_path / "pyproject.toml").write_text("[tool.pgtenancy.check]\nsealed = true\n")
    monkeypatch.chdir(tmp_path)
    from_config = run(check, *admin_args(sandbox, "--no-dynamic", "--format", "json"))
    assert from_config.exit_code == 1 and json.loads(from_config.stdout)["summary"]["sealed"] is True
