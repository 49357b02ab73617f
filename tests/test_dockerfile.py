"""The Dockerfile, checked without a Docker engine: it parses, names only files that exist,
and says what the image promises (port 9000, non-root, /data volume, health check).

The health check's Python one-liner is also run for real against a running keystage.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import Server, clean_env, pg_data_dir  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}


def parse(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]``: comments and blank lines dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments may sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        assert keyword.upper() in INSTRUCTIONS, f"Dockerfile line {number}: unknown instruction {keyword!r}"
        assert keyword == keyword.upper(), f"Dockerfile line {number}: write instructions in capitals"
        assert arguments.strip(), f"Dockerfile line {number}: {keyword} without arguments"
        instructions.append((keyword, arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def split_flags(arguments: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(arguments)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def env_values(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for word in shlex.split(arguments):
                name, sep, value = word.partition("=")
                assert sep, f"ENV {arguments!r}: write ENV NAME=value"
                values[name] = value
    return values


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1]:]


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/").removeprefix("**/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern) for p in prefixes):
            result = not negate
    return result


INSTRUCTIONS_PARSED = parse(DOCKERFILE.read_text())
FINAL = final_stage(INSTRUCTIONS_PARSED)


def test_parses_and_starts_from_the_slim_python_image() -> None:
    assert INSTRUCTIONS_PARSED[0][0] == "FROM"
    for keyword, arguments in INSTRUCTIONS_PARSED:
        if keyword == "FROM":
            image = arguments.split()[0]
            assert image == "python:3.11-slim-bookworm"


def test_every_copy_source_exists_and_is_not_dockerignored() -> None:
    patterns = dockerignore_patterns()
    seen = []
    for keyword, arguments in INSTRUCTIONS_PARSED:
        if keyword not in ("COPY", "ADD"):
            continue
        flags, words = split_flags(arguments)
        assert len(words) >= 2, f"{keyword} {arguments}: needs a source and a destination"
        if "from" in flags:
            continue  # copies from another build stage, not from the repository
        for source in words[:-1]:
            assert not source.startswith(("/", "..")), f"{keyword} source outside the build context: {source}"
            assert (ROOT / source).exists(), f"{keyword} {source}: no such file in the repository"
            assert not ignored(source.rstrip("/"), patterns), f"{keyword} {source} is excluded by .dockerignore"
            seen.append(source)
    assert "pyproject.toml" in seen


def test_copies_every_package_folder() -> None:
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = set(setuptools["package-dir"].values())
    copied = {
        word.rstrip("/").removeprefix("./")
        for keyword, arguments in INSTRUCTIONS_PARSED if keyword == "COPY"
        for word in split_flags(arguments)[1][:-1]
    }
    assert folders <= copied, f"package folders not copied into the image: {sorted(folders - copied)}"


def test_installs_xmlsec1_and_keystage() -> None:
    runs = " ".join(arguments for keyword, arguments in INSTRUCTIONS_PARSED if keyword == "RUN")
    assert "xmlsec1" in runs and "tini" in runs
    assert "pip install ." in runs


def test_final_image_settings() -> None:
    env = env_values(FINAL)
    assert env["KEYSTAGE_DATA_DIR"] == "/data"
    assert env["KEYSTAGE_LISTEN"] == "0.0.0.0:9000"
    keywords = dict(FINAL)
    assert keywords["EXPOSE"].split() == ["9000"]
    assert keywords["VOLUME"].strip("[]\" ") == "/data"
    users = [arguments for keyword, arguments in FINAL if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert exec_form(keywords["CMD"]) == ["keystage", "serve"]
    # An init as PID 1 reaps the PostgreSQL processes pg_ctl leaves behind and forwards SIGTERM.
    assert Path(exec_form(keywords["ENTRYPOINT"])[0]).name == "tini"


def healthcheck_command() -> list[str]:
    arguments = dict(FINAL)["HEALTHCHECK"]
    flags, _ = split_flags(arguments.split(" CMD ", 1)[0])
    assert {"interval", "timeout", "retries"} <= flags.keys()
    command = exec_form(arguments.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "/-/health/live/" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")
    return command


def test_healthcheck_succeeds_against_a_live_keystage_and_fails_without(tmp_path: Path, pg_data_dir: Path) -> None:
    command = healthcheck_command()
    server = Server(pg_data_dir, tmp_path)
    env = clean_env(pg_data_dir, KEYSTAGE_LISTEN=f"0.0.0.0:{server.port}")

    def check() -> int:
        return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=10).returncode

    try:
        server.wait_ready()
        assert check() == 0
        assert server.stop() == 0
    finally:
        server.kill_everything()
    assert check() != 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("FROM python:3.11-slim-bookworm\nRUNN echo\n", "unknown instruction"),
        ("FROM python:3.11-slim-bookworm\nRUN echo \\\n", "continued line"),
        ("FROM python:3.11-slim-bookworm\nCOPY\n", "without arguments"),
    ],
)
def test_the_parser_rejects_broken_dockerfiles(text: str, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        parse(text)


def test_dockerignore_matching() -> None:
    patterns = ["**/__pycache__", "tests", "*.egg-info", "!tests/keep"]
    assert ignored("engine/__pycache__", patterns)
    assert ignored("tests/x.py", patterns)
    assert ignored("keystage.egg-info", patterns)
    assert not ignored("tests/keep", patterns)
    assert not ignored("engine", patterns)
