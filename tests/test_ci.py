"""`.ci/run` runs the README's test command, as written, and cannot pass when tests fail."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run the tests", 1)[1]
    match = re.search(r"```sh\n(.+?)\n```", section, re.S)
    assert match, "README.md's 'Run the tests' section has a sh code block"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = readme_test_command()
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in lines, f".ci/run must contain the README's test command: {command}"


def test_ci_fails_when_a_step_fails() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    # The test command is the last thing run, so its exit status is the script's.
    last = [line for line in script.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last.strip() == readme_test_command()
    assert "KEYSTAGE_TEST_REQUIRE_ALL=1" in script  # skips for missing services or a browser fail in CI
