"""The README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set-up") : readme.index("## Quickstart")]
    commands = re.findall(r"```sh\n(.+?)\n```", setup)
    assert len(commands) == 2 and commands[0].endswith("pgtenancy demo")
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
