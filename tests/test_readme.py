"""The README's set-up commands are the ones CI runs."""

from tests.test_docs_snippets import ROOT, parse


def test_ci_runs_the_readme_test_command_verbatim():
    setup = [
        block.body.rstrip("\n")
        for block in parse(ROOT / "README.md")
        if block.id.startswith("README.md#set-up")
    ]
    assert len(setup) == 2 and setup[0].endswith("pgtenancy demo")
    assert setup[1] in (ROOT / ".ci" / "run").read_text().splitlines()
