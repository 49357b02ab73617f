"""The real ``keystage`` console script, run as a subprocess, the way an admin runs it.

The ``serve`` tests always use the embedded PostgreSQL in a private data directory:
starting it, sharing it with other commands and leaving no PostgreSQL process behind
are what they check. Tests that only need *a* database use the test kit's
``keystage_database_url`` (the server at ``KEYSTAGE_TEST_DATABASE_URL`` when set).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from keystage.engine.plugins import BUNDLED_PLUGINS
from keystage.engine.testing import free_port, http_status

KEYSTAGE = Path(sys.executable).parent / "keystage"
READY_TIMEOUT = 40.0
STOP_TIMEOUT = 25.0
LOG_LINE_LEVELS = (" DEBUG ", " INFO ", " WARNING ")


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    """A data directory for tests that start the embedded PostgreSQL, outside pytest's tmp_path.

    Run as root, the embedded server runs as the user ``embedded_postgres``, which must be
    able to traverse the data directory's parents; every pytest session starting (another
    one, run by someone else on this machine, say) resets ``/tmp/pytest-of-root`` to 0700
    and would pull the files from under a running server.
    """
    parent = Path(tempfile.mkdtemp(prefix="keystage-cli-"))
    parent.chmod(0o755)
    try:
        yield parent / "data"
    finally:
        for proc in postgres_processes(parent):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(parent, ignore_errors=True)


def clean_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The inherited environment without any KEYSTAGE_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTAGE_", "_KEYSTAGE_"))}
    env["KEYSTAGE_DATA_DIR"] = str(data_dir)
    env.update(settings)
    return env


def keystage(*args: str, env: dict[str, str], cwd: Path, stdin: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KEYSTAGE), *args], env=env, cwd=cwd, input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not log records (log records start with a timestamp and a level)."""
    return [
        line for line in stderr.splitlines()
        if line.strip() and not (line[:4].isdigit() and any(level in line for level in LOG_LINE_LEVELS))
    ]


def assert_one_clean_line(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The command failed with exactly one line on stderr and no traceback; return that line."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]






def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Every running process whose command line mentions ``data_dir`` (the embedded postmaster does)."""
    needle = str(data_dir.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(needle in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent has not collected it yet)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def postmaster(data_dir: Path) -> psutil.Process:
    pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    return psutil.Process(pid)


class Server:
    """``keystage serve`` on a free port, in its own session so that a failing test can kill it all."""

    def __init__(self, data_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env or clean_env(data_dir)
        self.log_path = cwd / f"serve-{self.port}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(KEYSTAGE), "serve", "--listen", f"127.0.0.1:{self.port}", *args],
            env=self.env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pg: list[psutil.Process] = []

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"keystage serve exited with {self.proc.returncode}:\n{self.output()}")
            if http_status(self.base + "/-/health/ready/") == 200:
                # Remember the postmaster and its children now, to check each of them is gone later.
                main = postmaster(self.data_dir)
                self.pg = [main, *main.children(recursive=True)]
                return
            time.sleep(0.1)
        pytest.fail(f"keystage serve not ready after {READY_TIMEOUT} s:\n{self.output()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"keystage serve did not stop {STOP_TIMEOUT} s after SIGTERM:\n{self.output()}")

    def kill_everything(self) -> None:
        """After a failure: nothing this test started may outlive it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for proc in [*self.pg, *postgres_processes(self.data_dir)]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.log.close()


@contextlib.contextmanager
def serving(data_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(data_dir, cwd, *args, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill_everything()


def assert_stopped_cleanly(server: Server) -> None:
    code = server.stop()
    assert code == 0, server.output()
    assert server.pg, "the postmaster was never seen"
    left = [p for p in server.pg if alive(p)]
    assert not left, f"PostgreSQL processes left behind: {left}"
    assert not postgres_processes(server.data_dir)
    assert "Traceback" not in server.output(), server.output()


# -- serve on the embedded PostgreSQL (always run) -------------------------------------


def test_serve_embedded_answers_ready_and_sigterm_stops_postgres(tmp_path: Path, pg_data_dir: Path) -> None:
    data_dir = pg_data_dir
    with serving(data_dir, tmp_path) as server:
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        assert postgres_processes(data_dir), "the embedded postmaster should mention the data dir"
        assert http_status(server.base + "/-/health/live/") == 200
        assert_stopped_cleanly(server)


@pytest.mark.parametrize("http_server", ["uvicorn", "hypercorn"])
def test_serve_two_workers_answers_and_stops_cleanly(tmp_path: Path, pg_data_dir: Path, http_server: str) -> None:
    data_dir = pg_data_dir
    env = clean_env(data_dir, KEYSTAGE_SERVER=http_server)
    with serving(data_dir, tmp_path, "--workers", "2", env=env) as server:
        parent = psutil.Process(server.proc.pid)
        workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, [c.cmdline() for c in parent.children()]
        statuses = [http_status(server.base + "/-/health/ready/") for _ in range(10)]
        assert statuses == [200] * 10
        assert_stopped_cleanly(server)
        assert not [w for w in workers if alive(w)]


def test_commands_share_the_running_servers_postgres(tmp_path: Path, pg_data_dir: Path) -> None:
    data_dir = pg_data_dir
    env = clean_env(data_dir)
    with serving(data_dir, tmp_path) as server:
        pg = postmaster(data_dir)

        created = keystage("user", "create", "alice", "--email", "alice@example.org", "--password-stdin",
                           env=env, cwd=tmp_path, stdin="correct horse battery staple\n")
        assert created.returncode == 0, created.stderr
        assert "created user alice" in created.stdout

        migrated = keystage("migrate", env=env, cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert "no pending migrations" in migrated.stdout

        # Same database as the server: alice is already there.
        again = keystage("user", "create", "alice", "--password-stdin", env=env, cwd=tmp_path, stdin="another one\n")
        line = assert_one_clean_line(again)
        assert "alice" in line or "username" in line

        assert alive(pg), "a command stopped the server's PostgreSQL"
        assert postmaster(data_dir).pid == pg.pid
        assert http_status(server.base + "/-/health/ready/") == 200
        assert_stopped_cleanly(server)


def test_command_without_server_starts_and_stops_embedded_postgres(tmp_path: Path, pg_data_dir: Path) -> None:
    data_dir = pg_data_dir
    result = keystage("migrate", env=clean_env(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "applied keystage 0001_core" in result.stdout
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert not postgres_processes(data_dir)


# -- one clear line for bad settings ----------------------------------------------------


def test_bad_listen_in_environment(tmp_path: Path) -> None:
    result = keystage("serve", env=clean_env(tmp_path / "data", KEYSTAGE_LISTEN="nonsense"), cwd=tmp_path)
    line = assert_one_clean_line(result, 2)
    assert "KEYSTAGE_LISTEN" in line
    assert not (tmp_path / "data" / "postgres").exists(), "a bad setting must stop startup before the database"


def test_bad_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "keystage.toml"
    config.write_text('listen = "127.0.0.1:9000\nworkers = [\n')
    result = keystage("--config", str(config), "serve", env=clean_env(tmp_path / "data"), cwd=tmp_path)
    line = assert_one_clean_line(result, 2)
    assert str(config) in line and "TOML" in line


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('listen = "nonsense"\n', ("listen", "HOST:PORT")),
        ("database_pool_size = 0\n", ("database_pool_size",)),
        ('database_url = "mysql://db/x"\n', ("database_url",)),
        ('log_level = "LOUD"\n', ("log_level",)),
        ('server = "nginx"\n', ("server", "uvicorn, hypercorn")),
        ("no_such_setting = 1\n", ("no_such_setting", "unknown")),
    ],
)
def test_bad_value_in_toml(tmp_path: Path, toml: str, names: tuple[str, ...]) -> None:
    config = tmp_path / "keystage.toml"
    config.write_text(toml)
    result = keystage("--config", str(config), "serve", env=clean_env(tmp_path / "data"), cwd=tmp_path)
    line = assert_one_clean_line(result, 2)
    assert str(config) in line
    for name in names:
        assert name in line


def test_unreachable_database_names_host_and_hides_password(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path / "data",
        KEYSTAGE_DATABASE_URL="postgresql://u:secretpw@127.0.0.1:1/x",
        KEYSTAGE_DATABASE_CONNECT_TIMEOUT="2",
    )
    started = time.monotonic()
    result = keystage("serve", "--listen", f"127.0.0.1:{free_port()}", env=env, cwd=tmp_path, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "secretpw" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # Retry warnings are log records; the verdict is one line of its own.
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "127.0.0.1:1" in lines[0]
    assert 1.5 <= elapsed < 15, f"the retry should last about the 2 s asked, took {elapsed:.1f} s"


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, keystage_database_url: str) -> None:
    env = clean_env(tmp_path / "data", KEYSTAGE_DATABASE_URL=keystage_database_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = keystage("serve", "--listen", f"127.0.0.1:{port}", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    refusal = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(refusal) == 1, result.stderr
    assert f"127.0.0.1:{port}" in refusal[0] and "KEYSTAGE_LISTEN" in refusal[0] and "in use" in refusal[0]


# -- config show, plugins list, secret key, users -----------------------------------------


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    secret = "s3cr3t-" + "k" * 40
    config = tmp_path / "keystage.toml"
    config.write_text('redis_url = "redis://:redispassword@cache.example:6379/0"\n')
    env = clean_env(
        tmp_path / "data",
        KEYSTAGE_SECRET_KEY=secret,
        KEYSTAGE_DATABASE_URL="postgresql://admin:dbpassword@db.example:5432/keystage",
    )
    text = keystage("--config", str(config), "config", "show", env=env, cwd=tmp_path)
    as_json = keystage("--config", str(config), "config", "show", "--json", env=env, cwd=tmp_path)
    for result in (text, as_json):
        assert result.returncode == 0, result.stderr
        for hidden in (secret, "dbpassword", "redispassword"):
            assert hidden not in result.stdout + result.stderr
    values = json.loads(as_json.stdout)
    assert values["secret_key"] == "********"
    assert values["database_url"] == "postgresql://admin:***@db.example:5432/keystage"
    assert values["redis_url"] == "redis://:***@cache.example:6379/0"
    assert values["data_dir"] == str(tmp_path / "data")
    assert "database_url = " in text.stdout and "db.example" in text.stdout


def test_plugins_list_shows_bundled_plugins(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "data")
    text = keystage("plugins", "list", env=env, cwd=tmp_path)
    as_json = keystage("plugins", "list", "--json", env=env, cwd=tmp_path)
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    listed = {p["name"]: p for p in json.loads(as_json.stdout)}
    assert BUNDLED_PLUGINS
    for module in BUNDLED_PLUGINS:
        name = module.removeprefix("keystage.")
        assert name in listed, listed
        assert listed[name]["origin"] == "bundled" and listed[name]["enabled"] is True
        assert listed[name]["hooks"], f"{name} implements no hook"
        assert name in text.stdout
    assert "bundled" in text.stdout


def test_secret_key_generated_once_private_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key_file = data_dir / "secret_key"
    env = clean_env(data_dir)
    first = keystage("config", "show", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert key not in first.stdout
    before = key_file.stat()

    second = keystage("plugins", "list", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    after = key_file.stat()
    assert key_file.read_text().strip() == key
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stat.S_IMODE(after.st_mode) == 0o600


def test_given_secret_key_is_not_written_and_a_short_one_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    given = keystage("config", "show", env=clean_env(data_dir, KEYSTAGE_SECRET_KEY="x" * 40), cwd=tmp_path)
    assert given.returncode == 0, given.stderr
    assert not (data_dir / "secret_key").exists()
    short = keystage("config", "show", env=clean_env(data_dir, KEYSTAGE_SECRET_KEY="short"), cwd=tmp_path)
    assert "KEYSTAGE_SECRET_KEY" in assert_one_clean_line(short, 2)


def test_user_create_duplicate_username(tmp_path: Path, keystage_database_url: str) -> None:
    env = clean_env(tmp_path / "data", KEYSTAGE_DATABASE_URL=keystage_database_url)
    first = keystage("user", "create", "bob", "--superuser", "--password-stdin", env=env, cwd=tmp_path,
                     stdin="a long enough password\n")
    assert first.returncode == 0, first.stderr
    assert "created user bob" in first.stdout and "superuser" in first.stdout

    again = keystage("user", "create", "bob", "--password-stdin", env=env, cwd=tmp_path, stdin="other password\n")
    line = assert_one_clean_line(again)
    assert line.startswith("keystage: ")
    assert "bob" in line or "username" in line
    assert "taken" in line or "exists" in line


def test_user_create_needs_a_password_on_stdin(tmp_path: Path, keystage_database_url: str) -> None:
    env = clean_env(tmp_path / "data", KEYSTAGE_DATABASE_URL=keystage_database_url)
    result = keystage("user", "create", "carol", "--password-stdin", env=env, cwd=tmp_path, stdin="")
    assert "password" in assert_one_clean_line(result, 2)


# -- the admin documentation keeps up with the code ---------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    import dataclasses

    from keystage.engine.config import Settings

    text = (DOCS / "admin" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `KEYSTAGE_")}
    internal = {"plugin_config", "config_file"}  # [plugin.NAME] tables and --config, documented in prose
    for field in dataclasses.fields(Settings):
        if field.name in internal:
            continue
        env_name = f"`KEYSTAGE_{field.name.upper()}`"
        assert env_name in rows, f"{env_name} is not in the settings table of docs/admin/configuration.md"
        assert f"`{field.name}`" in rows[env_name], f"the TOML key of {env_name} is not documented"
    documented = {name.strip("`").removeprefix("KEYSTAGE_").lower() for name in rows}
    stale = documented - {f.name for f in dataclasses.fields(Settings)}
    assert not stale, f"documented settings that do not exist: {sorted(stale)}"


def test_every_command_is_documented() -> None:
    import click

    from keystage.engine.cli import main

    text = (DOCS / "admin" / "cli.md").read_text()

    def walk(group: click.Group, prefix: str) -> Iterator[str]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    commands = list(walk(main, "keystage "))
    assert "keystage plugins list" in commands
    for command in commands:
        assert f"`{command}" in text, f"`{command}` is not documented in docs/admin/cli.md"


def test_docs_links_resolve() -> None:
    import re

    pages = [DOCS / "README.md", *(DOCS / "admin" / name for name in ("configuration.md", "cli.md", "operations.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(DOCS.parent)}: link to {target} leads nowhere"
