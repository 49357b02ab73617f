"""A real third-party plugin, installed with pip, seen (or refused) by the real ``keystage`` command.

``tests/fixtures/keystage-hello-plugin`` is a complete distribution with an entry point in
the ``keystage`` group. It is built and installed once per module with
``pip install --no-deps --target``; each test then runs ``keystage`` with that directory on
``PYTHONPATH``, which is how an installed plugin becomes visible to ``importlib.metadata``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from test_cli import assert_one_clean_line, clean_env, keystage

FIXTURE = Path(__file__).parent / "fixtures" / "keystage-hello-plugin"
VERSION = "0.3.0"


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed fixture plugin (code and ``.dist-info`` with its entry point)."""
    work = tmp_path_factory.mktemp("hello-plugin")
    source = work / "src"
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in tests/fixtures.
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, f"pip install of the fixture plugin failed:\n{result.stdout}\n{result.stderr}"
    dist_info = target / f"keystage_hello_plugin-{VERSION}.dist-info"
    assert "hello = keystage_hello" in (dist_info / "entry_points.txt").read_text()
    assert (target / "keystage_hello" / "sql" / "0001_greetings.sql").is_file()
    return target


def plugin_env(tmp_path: Path, site: Path | None, **settings: str) -> dict[str, str]:
    env = clean_env(tmp_path / "data")
    env.pop("HELLO_PLUGIN_MODE", None)
    env.update(settings)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    else:
        env.pop("PYTHONPATH", None)
    return env


def listed(tmp_path: Path, env: dict[str, str]) -> dict[str, dict]:
    result = keystage("plugins", "list", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


def test_installed_plugin_is_listed_but_disabled(tmp_path: Path, hello_site: Path) -> None:
    assert "hello" not in listed(tmp_path, plugin_env(tmp_path, None)), "only the pip install makes it visible"
    hello = listed(tmp_path, plugin_env(tmp_path, hello_site))["hello"]
    assert hello["origin"] == "third-party"
    assert hello["version"] == VERSION
    assert hello["enabled"] is False
    assert hello["hooks"] == []


def test_installed_but_disabled_plugin_is_never_imported(tmp_path: Path, hello_site: Path) -> None:
    env = plugin_env(tmp_path, hello_site, HELLO_PLUGIN_MODE="import-error")
    assert listed(tmp_path, env)["hello"]["enabled"] is False


@pytest.mark.parametrize("enabled", ["hello", "*", "other-thing, hello"])
def test_enabled_plugin_is_loaded_with_its_hooks(tmp_path: Path, hello_site: Path, enabled: str) -> None:
    env = plugin_env(tmp_path, hello_site, KEYSTAGE_PLUGINS=enabled)
    if "other-thing" in enabled:
        # Naming a plugin that is not installed is itself a startup error.
        line = assert_one_clean_line(keystage("plugins", "list", env=env, cwd=tmp_path))
        assert "other-thing" in line and "KEYSTAGE_PLUGINS" in line
        return
    hello = listed(tmp_path, env)["hello"]
    assert hello["enabled"] is True
    assert hello["origin"] == "third-party"
    assert hello["module"] == "keystage_hello"
    assert hello["hooks"] == ["check_config", "register_migrations"]
    text = keystage("plugins", "list", env=env, cwd=tmp_path)
    row = next(line for line in text.stdout.splitlines() if line.startswith("hello "))
    assert "third-party" in row and "yes" in row and "register_migrations" in row


def test_plugin_that_fails_to_import_stops_startup(tmp_path: Path, hello_site: Path) -> None:
    env = plugin_env(tmp_path, hello_site, KEYSTAGE_PLUGINS="hello", HELLO_PLUGIN_MODE="import-error")
    for args in (("plugins", "list"), ("serve", "--listen", "127.0.0.1:0")):
        line = assert_one_clean_line(keystage(*args, env=env, cwd=tmp_path))
        assert f"hello {VERSION}" in line
        assert "hello-backend" in line, "the import error itself should be shown"
    assert not (tmp_path / "data" / "postgres").exists(), "a broken plugin must stop startup before the database"


def test_misspelled_hook_is_refused_at_startup(tmp_path: Path, hello_site: Path) -> None:
    env = plugin_env(tmp_path, hello_site, KEYSTAGE_PLUGINS="hello", HELLO_PLUGIN_MODE="misspelled-hook")
    line = assert_one_clean_line(keystage("plugins", "list", env=env, cwd=tmp_path))
    assert "hello" in line
    assert "register_stage_type" in line


def test_plugin_asking_for_another_api_version_is_refused(tmp_path: Path, hello_site: Path) -> None:
    env = plugin_env(tmp_path, hello_site, KEYSTAGE_PLUGINS="hello", HELLO_PLUGIN_MODE="future-api")
    line = assert_one_clean_line(keystage("plugins", "list", env=env, cwd=tmp_path))
    assert f"hello {VERSION}" in line
    assert ">=2" in line


def test_plugin_config_is_checked_by_the_plugin(tmp_path: Path, hello_site: Path) -> None:
    config = tmp_path / "keystage.toml"
    config.write_text('[plugin.hello]\ngreeting = 5\n')
    env = plugin_env(tmp_path, hello_site, KEYSTAGE_PLUGINS="hello")
    line = assert_one_clean_line(keystage("--config", str(config), "plugins", "list", env=env, cwd=tmp_path))
    assert f"hello {VERSION}" in line and "plugin.hello.greeting" in line

    config.write_text('[plugin.hello]\ngreeting = "bonjour"\n')
    assert keystage("--config", str(config), "plugins", "list", env=env, cwd=tmp_path).returncode == 0


def test_migrate_applies_the_plugins_migration_under_its_name(
    tmp_path: Path, hello_site: Path, keystage_database_url: str
) -> None:
    disabled = plugin_env(tmp_path, hello_site, KEYSTAGE_DATABASE_URL=keystage_database_url)
    first = keystage("migrate", env=disabled, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "hello" not in first.stdout, "a disabled plugin's migrations must not run"

    env = {**disabled, "KEYSTAGE_PLUGINS": "hello"}
    second = keystage("migrate", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "applied hello 0001_greetings" in second.stdout

    third = keystage("migrate", env=env, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "no pending migrations" in third.stdout

    async def inspect() -> tuple[list[asyncpg.Record], str | None]:
        conn = await asyncpg.connect(keystage_database_url)
        try:
            rows = await conn.fetch("SELECT owner, number, name FROM keystage_migrations WHERE owner = 'hello'")
            greeting = await conn.fetchval("SELECT greeting FROM hello_greetings")
            return rows, greeting
        finally:
            await conn.close()

    rows, greeting = asyncio.run(inspect())
    assert [(r["owner"], r["number"], r["name"]) for r in rows] == [("hello", 1, "greetings")]
    assert greeting == "hello, world"
