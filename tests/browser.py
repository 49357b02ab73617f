"""Shared helpers for tests that drive a real Chromium against a real ``keystage serve``.

Use from a test module (tests/ is on ``sys.path`` because it has no ``__init__.py``)::

    from browser import ARTIFACTS, LiveServer, browser, live_server  # noqa: F401  (fixtures)

Fixtures:

* ``browser`` (session) — a headless Chromium (the Debian package at ``/usr/bin/chromium``)
  through the async Playwright API. Skipped with a clear reason when Chromium or the
  ``playwright`` package is missing; failed instead when ``KEYSTAGE_TEST_REQUIRE_ALL=1`` (CI).
  Never run ``playwright install``: the system Chromium is used.
* ``live_server`` — ``keystage serve`` as a subprocess on a free port, against a fresh, empty
  database created on the test kit's server (``KEYSTAGE_TEST_DATABASE_URL``, or the embedded
  PostgreSQL) and dropped ``WITH (FORCE)`` afterwards.
  ``KEYSTAGE_EXTERNAL_URL`` is ``http://localhost:<port>`` and pages are to be opened at
  ``live_server.url`` (that same origin), so WebAuthn tests get the relying-party id
  ``localhost``, which browsers accept over plain http. Nothing is prepared in the database:
  first start applies the shipped default blueprints (``default-authentication-flow`` ...),
  as it does for an admin. The server's log is printed at teardown (pytest shows it on failure).

``ARTIFACTS`` is ``test-artifacts/`` at the repository root (git-ignored): screenshots go there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from keystage.engine.testing import free_port, fresh_database, http_status, skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
KEYSTAGE = Path(sys.executable).parent / "keystage"
DEFAULT_AUTH_FLOW = "default-authentication-flow"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def artifact(name: str) -> Path:
    """A path in ``test-artifacts/`` (created if missing) for a screenshot or other output."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


# -- Chromium -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, shared by the session; give each test its own ``new_context()``."""
    if not CHROMIUM.exists():
        skip_or_fail(f"browser tests need Chromium at {CHROMIUM} (Debian package 'chromium')")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        skip_or_fail("browser tests need the 'playwright' Python package (pip install keystage[test])")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
        )
        try:
            yield chromium
        finally:
            await chromium.close()


# -- keystage serve -------------------------------------------------------------------------






class LiveServer:
    """One ``keystage serve`` process (in its own process group) and the environment it runs with."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.database_url = database_url
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTAGE_", "_KEYSTAGE_"))}
        env.update({
            "KEYSTAGE_DATABASE_URL": database_url,
            "KEYSTAGE_DATA_DIR": str(data_dir),
            "KEYSTAGE_LISTEN": f"127.0.0.1:{self.port}",
            "KEYSTAGE_EXTERNAL_URL": self.url,
        })
        self.env = env
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(KEYSTAGE), "serve"], env=self.env, cwd=self.data_dir.parent,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"keystage serve exited with {self.proc.returncode}:\n{self.output()}")
            # Probe over 127.0.0.1: the process listens there; the browser reaches it as localhost.
            if http_status(f"http://127.0.0.1:{self.port}/-/health/ready/") == 200:
                return
            time.sleep(0.1)
        pytest.fail(f"keystage serve not ready after {READY_TIMEOUT} s:\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cli(self, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``keystage ARGS`` with the server's environment (same database, same data dir)."""
        result = subprocess.run(
            [str(KEYSTAGE), *args], env=self.env, cwd=self.data_dir.parent, input=stdin,
            capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            pytest.fail(f"keystage {' '.join(args)} exited with {result.returncode}:\n{result.stderr}")
        return result

    def create_user(self, username: str, password: str, *extra: str) -> None:
        result = self.cli("user", "create", username, "--password-stdin", *extra, stdin=password + "\n")
        assert username in result.stdout, result.stdout

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def live_server(tmp_path: Path, keystage_server_url: str) -> Iterator[LiveServer]:
    """``keystage serve`` on a fresh database of the test kit's server (KEYSTAGE_TEST_DATABASE_URL,
    or the embedded one); stopped and the database dropped afterwards."""
    if not KEYSTAGE.exists():
        skip_or_fail(f"the keystage console script is not installed next to {sys.executable}")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with fresh_database(keystage_server_url, prefix="keystage_browser") as database_url:
        server = LiveServer(database_url, data_dir)
        try:
            server.start()
            yield server
        finally:
            server.stop()
            # Shown by pytest under "Captured stdout teardown" when the test failed.
            print(f"--- keystage serve log ({server.log_path}) ---\n{server.output()}")
            with contextlib.suppress(OSError):
                shutil.rmtree(data_dir)
