"""The distribution: every package folder is listed, and the wheel holds exactly ``keystage.*``.

The folders ``engine/``, ``stages/``, ``plugins/``, ``web/`` and ``locales/`` install as
``keystage.<folder>`` through setuptools' ``package-dir``; packages are listed by hand in
pyproject.toml, so a new package folder that is not listed would silently be left out of
the wheel. The wheel test builds the real thing (about 5 s; the build may take at most
``BUILD_TIMEOUT``) from a copy of the tree, so that no build/ or *.egg-info lands in it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
FOLDERS = ("engine", "stages", "plugins", "web", "locales")
TOP_LEVEL_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
BUILD_TIMEOUT = 30


def package_folder(package: str) -> Path:
    """Where setuptools finds ``package``: the longest ``package-dir`` prefix, then one folder per name."""
    mapping: dict[str, str] = SETUPTOOLS.get("package-dir", {})
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ROOT.joinpath(mapping[prefix], *parts[cut:])
    return ROOT.joinpath(mapping.get("", ""), *parts)


def source_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]


def test_package_dir_maps_each_folder_under_keystage() -> None:
    assert SETUPTOOLS["package-dir"] == {f"keystage.{folder}": folder for folder in FOLDERS}


def test_every_package_folder_is_listed() -> None:
    listed = {package_folder(p).resolve(): p for p in SETUPTOOLS["packages"]}
    on_disk = {
        init.parent.resolve()
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    missing = sorted(str(p.relative_to(ROOT)) for p in on_disk - listed.keys())
    assert not missing, f"package folders missing from [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(name for path, name in listed.items() if path not in on_disk)
    assert not stale, f"listed packages without a folder holding __init__.py: {stale}"


def test_python_files_live_in_packages() -> None:
    # A folder of .py files without __init__.py is a namespace package that setuptools, with an
    # explicit package list, leaves out of the wheel without a word.
    orphans = sorted(
        str(py.parent.relative_to(ROOT))
        for folder in FOLDERS
        for py in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in py.parts and not (py.parent / "__init__.py").exists()
    )
    assert not orphans, f"folders with Python files but no __init__.py: {sorted(set(orphans))}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    for name in TOP_LEVEL_FILES:
        if (ROOT / name).exists():
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=SKIP)
    out = work / "dist"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"building the wheel took more than {BUILD_TIMEOUT} s")
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out.glob("keystage-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    archive = zipfile.ZipFile(wheels[0])
    archive.source = source  # type: ignore[attr-defined]
    return archive


def test_wheel_installs_only_under_keystage(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/", 1)[0] for name in wheel.namelist()}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == {"keystage"}, f"top-level names in the wheel: {sorted(top)}"
    for folder in (*FOLDERS, "tests", "bench", "docs"):
        assert folder not in top


def test_wheel_holds_sql_and_py_typed(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    sql = sorted(p.name for p in (ROOT / "engine" / "sql").glob("*.sql"))
    assert sql, "the kernel has migrations"
    for name in sql:
        assert f"keystage/engine/sql/{name}" in names
    assert "keystage/engine/py.typed" in names
    for marker in (ROOT / folder for folder in FOLDERS):
        for typed in marker.rglob("py.typed"):
            assert f"keystage/{typed.relative_to(ROOT).as_posix()}" in names


def test_wheel_holds_every_file_of_the_package_folders(wheel: zipfile.ZipFile) -> None:
    # Templates, static files, catalogs and migrations are package data: none may be forgotten.
    source: Path = wheel.source  # type: ignore[attr-defined]
    names = set(wheel.namelist())
    expected = {
        f"keystage/{path.relative_to(source).as_posix()}"
        for folder in FOLDERS
        for path in source_files(source / folder)
    }
    missing = sorted(expected - names)
    assert not missing, f"files of the package folders missing from the wheel: {missing}"


def test_wheel_declares_the_console_script_and_test_kit(wheel: zipfile.ZipFile) -> None:
    dist_info = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = wheel.read(dist_info).decode()
    assert "keystage = keystage.engine.cli:main" in entry_points
    assert "keystage = keystage.engine.testing" in entry_points
