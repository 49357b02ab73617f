"""``keystage plugin new``: each kind of package it makes installs with pip and passes its own tests.

The packages are generated with the real command (``keystage.engine.cli:main``), installed in one
``pip install --no-deps --target`` (from copies, so the build leaves nothing behind), and each
package's generated test suite runs in a subprocess with that directory on ``PYTHONPATH`` and the
plugin enabled — what its author does with ``pip install -e . && pytest``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from keystage.engine import API_VERSION
from keystage.engine.cli import main

KINDS = ("stage", "policy", "provider", "source")


def plugin_name(kind: str) -> str:
    return f"scaffolded-{kind}"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder holding one generated package per kind, the directory they are installed into)."""
    work = tmp_path_factory.mktemp("scaffold")
    runner = CliRunner()
    for kind in KINDS:
        result = runner.invoke(main, ["plugin", "new", plugin_name(kind), "--kind", kind,
                                      "--directory", str(work / "packages" / kind)])
        assert result.exit_code == 0, result.output
        assert "pip install -e" in result.output
        shutil.copytree(work / "packages" / kind, work / "build" / kind)
    site = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         *[str(work / "build" / kind) for kind in KINDS]],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"pip install of the generated packages failed:\n{result.stdout}\n{result.stderr}"
    return work / "packages", site


@pytest.mark.parametrize("kind", KINDS)
def test_generated_package_passes_its_own_tests(
    kind: str, generated: tuple[Path, Path], keystage_server_url: str, tmp_path: Path
) -> None:
    packages, site = generated
    module = f"keystage_scaffolded_{kind}"
    assert (site / module / "__init__.py").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTAGE_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), KEYSTAGE_PLUGINS=plugin_name(kind), KEYSTAGE_TEST_DATABASE_URL=keystage_server_url,
               PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(packages / kind / "tests"), "-q", "-p", "no:cacheprovider"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"the generated {kind} plugin's tests failed:\n{result.stdout[-6000:]}\n{result.stderr}")
    assert " passed" in result.stdout and "skipped" not in result.stdout and "error" not in result.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_generated_package_declares_entry_point_api_range_and_catalogs(kind: str, generated: tuple[Path, Path]) -> None:
    packages, site = generated
    root = packages / kind
    module = f"keystage_scaffolded_{kind}"
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["keystage"] == {plugin_name(kind): module}
    major = int(API_VERSION.split(".")[0])
    assert f'KEYSTAGE_API = ">={API_VERSION},<{major + 1}"' in (root / module / "__init__.py").read_text()
    assert (root / module / "locales" / f"{module}.pot").is_file()
    installed = site / module / "locales" / "de" / "LC_MESSAGES" / f"{module}.po"
    assert installed.is_file(), "the catalogs are package data"
    check = CliRunner().invoke(main, ["i18n", "check", "--domain-dir", str(root / module / "locales")])
    assert check.exit_code == 0, check.output
    if kind == "stage":
        assert (site / module / "sql" / "0001_scaffolded_stage_confirmations.sql").is_file()
    if kind != "policy":
        assert list((site / module / "templates").glob("*.html"))


@pytest.mark.parametrize(("args", "message"), [
    (["Not A Name"], "cannot be a plugin name"),
    (["x" * 41], "cannot be a plugin name"),
    (["password", "--kind", "stage"], "stage type 'password' is already registered by plugin stages.password"),
    (["ok", "--kind", "theme"], "Invalid value for '--kind'"),
])
def test_refusals(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plugin", "new", *args, "--directory", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["plugin", "new", "fresh", "--directory", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_default_folder_and_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plugin", "new", "keystage-acme-pin"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "keystage-acme-pin"
    assert (root / "keystage_acme_pin" / "stage.py").read_text().count('type_name = "acme_pin"') == 1
    assert 'acme-pin = "keystage_acme_pin"' in (root / "pyproject.toml").read_text()
