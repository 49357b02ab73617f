"""The code in docs/plugins/ works: what the tutorials show is what is tested.

A code block preceded by ``<!-- file: PATH -->`` is a whole file. In the stage tutorial those
are the files of docs/examples/keystage-terms (installed and tested by test_example_plugin.py);
in the policy tutorial, what ``keystage plugin new office-only --kind policy`` writes (its kind is
tested by test_scaffold.py). The expression-helper and event-listener tutorials are complete
packages: they are written out, installed with pip and their tests run, like a reader would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from keystage.engine.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins"
EXAMPLE = ROOT / "docs" / "examples" / "keystage-terms"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)^```$", re.S | re.M)
PACKAGES = {"tutorial-expression-helper.md": ("keystage-hr", "hr"),
            "tutorial-event-listener.md": ("keystage-login-alerts", "login-alerts")}


def file_blocks(document: str) -> dict[str, str]:
    text = (DOCS / document).read_text()
    blocks = {m["path"]: m["body"] for m in FILE_BLOCK.finditer(text)}
    assert blocks, f"{document} shows no whole file"
    assert len(blocks) == text.count("<!-- file:"), f"{document}: a file marker not followed by a code block"
    return blocks


def test_the_stage_tutorial_shows_the_example_plugin_as_it_is() -> None:
    blocks = file_blocks("tutorial-stage.md")
    for path, body in blocks.items():
        assert (EXAMPLE / path).read_text() == body, f"tutorial-stage.md shows another {path} than {EXAMPLE}"
    for must in ("pyproject.toml", "keystage_terms/__init__.py", "keystage_terms/stage.py",
                 "keystage_terms/templates/terms.html", "tests/test_terms.py"):
        assert must in blocks


def test_the_policy_tutorial_shows_what_the_scaffold_writes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plugin", "new", "office-only", "--kind", "policy",
                                       "--directory", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    for path, body in file_blocks("tutorial-policy.md").items():
        assert (tmp_path / "pkg" / path).read_text() == body, f"tutorial-policy.md: {path} differs from the scaffold"


@pytest.fixture(scope="module")
def tutorial_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder the tutorial packages are written to, the directory they are installed into)."""
    work = tmp_path_factory.mktemp("tutorials")
    for document in PACKAGES:
        for path, body in file_blocks(document).items():
            (work / "src" / path).parent.mkdir(parents=True, exist_ok=True)
            (work / "src" / path).write_text(body)
    site = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         *[str(work / "src" / package) for package, _ in PACKAGES.values()]],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"pip install of the tutorial packages failed:\n{result.stdout}\n{result.stderr}"
    return work / "src", site


@pytest.mark.parametrize("document", sorted(PACKAGES))
def test_the_tutorial_package_passes_its_tests(
    document: str, tutorial_site: tuple[Path, Path], keystage_server_url: str, tmp_path: Path
) -> None:
    source, site = tutorial_site
    package, plugin = PACKAGES[document]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTAGE_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), KEYSTAGE_PLUGINS=plugin, KEYSTAGE_TEST_DATABASE_URL=keystage_server_url,
               PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(source / package / "tests"), "-q", "-p", "no:cacheprovider"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"{document}: its tests failed:\n{result.stdout[-6000:]}\n{result.stderr}"
    promised = re.search(r"pytest\s+# (\d+) passed", (DOCS / document).read_text())
    assert promised and f"{promised.group(1)} passed" in result.stdout, result.stdout
