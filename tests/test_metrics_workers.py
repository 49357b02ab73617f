"""/-/metrics with several workers: every scrape reports the sum over all workers."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from keystage.engine.testing import free_port, http_status
from test_cli import KEYSTAGE, clean_env

TOTAL = re.compile(r'^keystage_http_requests_total\{method="GET",status="200"\} (\d+)', re.M)


def fetch(url: str) -> str:
    # A new connection per request, so the kernel spreads them over both workers.
    request = urllib.request.Request(url, headers={"Connection": "close"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_metrics_are_summed_over_workers(keystage_database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(tmp_path / "data", KEYSTAGE_DATABASE_URL=keystage_database_url,
                    KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS="false", KEYSTAGE_LOG_LEVEL="WARNING")
    server = subprocess.Popen([str(KEYSTAGE), "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}"],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while http_status(f"{base}/-/health/live/") != 200:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        before = int(TOTAL.search(fetch(f"{base}/-/metrics")).group(1))  # type: ignore[union-attr]
        for _ in range(40):
            fetch(f"{base}/-/health/live/")
        seen: list[Any] = []
        for index in range(10):
            total = int(TOTAL.search(fetch(f"{base}/-/metrics")).group(1))  # type: ignore[union-attr]
            seen.append(total)
            # Earlier scrapes count too (they were GET 200): before + 1 (the first scrape) + 40 + index.
            assert total == before + 1 + 40 + index, seen
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0
    assert not list((tmp_path / "data" / "metrics").glob("*/*.db")), "the metrics directory is cleaned at exit"
