"""docs/examples/keystage-terms, the example plugin of docs/plugins/: installed with pip, its own tests run.

The package is built and installed once per module with ``pip install --no-deps --target`` (from
a copy, so the build leaves nothing in docs/). Its test suite then runs in a subprocess with that
directory on ``PYTHONPATH`` — exactly what a plugin author does with ``pip install -e . && pytest``
— against this session's PostgreSQL. A second test drives the installed stage in a flow here.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from keystage.engine.testing import FlowDriver, make_flow

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "keystage-terms"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def terms_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a copy of the example's source, the directory it is installed into)."""
    work = tmp_path_factory.mktemp("keystage-terms")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                                   ".pytest_cache"))
    site = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, f"pip install of the example plugin failed:\n{result.stdout}\n{result.stderr}"
    assert "terms = keystage_terms" in (site / "keystage_terms-1.0.0.dist-info" / "entry_points.txt").read_text()
    for data in ("sql/0001_acceptances.sql", "templates/terms.html", "locales/keystage_terms.pot",
                 "locales/de/LC_MESSAGES/keystage_terms.po", "locales/fr/LC_MESSAGES/keystage_terms.po"):
        assert (site / "keystage_terms" / data).is_file(), f"{data} is missing from the installed package"
    return source, site


def test_its_own_tests_pass(terms_install: tuple[Path, Path], keystage_server_url: str, tmp_path: Path) -> None:
    source, site = terms_install
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTAGE_") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), KEYSTAGE_PLUGINS="terms", KEYSTAGE_TEST_DATABASE_URL=keystage_server_url,
               PYTHONDONTWRITEBYTECODE="1")
    # Run from elsewhere, so that `keystage_terms` is imported from the installed copy, not the source.
    where = subprocess.run([sys.executable, "-c", "import keystage_terms; print(keystage_terms.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(source / "tests"), "-q", "-p", "no:cacheprovider"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"the example plugin's tests failed:\n{result.stdout[-6000:]}\n{result.stderr}"
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout


@pytest.fixture
def terms_module(terms_install: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(terms_install[1]))
    return importlib.import_module("keystage_terms")


@pytest.fixture
def keystage_extra_plugins(terms_module: ModuleType) -> list[tuple[str, object]]:
    return [("terms", terms_module)]


async def test_the_terms_stage_in_a_flow(keystage_app: Any, flow: FlowDriver, user_factory: Any) -> None:
    kernel = keystage_app.extensions["keystage"]
    assert kernel.stage_types["terms"].__module__ == "keystage_terms.stage"
    user = await user_factory("dora", password=PASSWORD)
    await make_flow(keystage_app, "login", [
        ("identification", {}), ("password", {}),
        ("terms", {"version": "7", "url": "https://example.com/terms"}), ("user_login", {})])
    await flow.start("login", locale="de")
    await flow.submit(uid_field="dora")
    assert (await flow.submit(password=PASSWORD))["component"] == "terms"

    await flow.submit(accept="")
    assert flow.component == "terms"
    assert flow.errors == {"accept": [{"code": "required", "message":
                                       "Bitte akzeptieren Sie die Nutzungsbedingungen, um fortzufahren."}]}
    assert await kernel.pool.fetchval("SELECT count(*) FROM terms_acceptances") == 0

    assert (await flow.submit(accept="on"))["component"] == "redirect"
    row = await kernel.pool.fetchrow("SELECT user_id, version FROM terms_acceptances")
    assert (row["user_id"], row["version"]) == (user.id, "7")
    assert await kernel.pool.fetchval(
        "SELECT owner FROM keystage_migrations WHERE owner = 'terms' AND number = 1") == "terms"
    events = await kernel.pool.fetch("SELECT action FROM events WHERE user_id = $1 ORDER BY id", user.id)
    assert [e["action"] for e in events][-2:] == ["terms_accepted", "login"]


async def test_the_stage_tutorials_blueprint_puts_it_into_the_default_login(
    keystage_app: Any, flow: FlowDriver, user_factory: Any, apply_blueprint: Any
) -> None:
    from keystage.engine.blueprints import apply_defaults

    tutorial = (EXAMPLE.parent.parent / "plugins" / "tutorial-stage.md").read_text()
    blueprint = tutorial.split("```yaml\n# terms.yaml\n", 1)[1].split("```", 1)[0]
    await apply_defaults(keystage_app.extensions["keystage"])
    await apply_blueprint(blueprint)
    await user_factory("erin", password=PASSWORD)
    await flow.start("default-authentication-flow", locale="fr")
    await flow.submit(uid_field="erin")
    challenge = await flow.submit(password=PASSWORD)
    assert (challenge["component"], challenge["terms_version"]) == ("terms", "2024-06")
    await flow.submit(accept=False)
    assert flow.errors["accept"][0]["message"] == "Veuillez accepter les conditions d’utilisation pour continuer."
    assert (await flow.submit(accept=True))["component"] == "user_login"
    assert (await flow.submit())["component"] == "redirect"
