"""Benchmark (not a test): how fast ``keystage serve`` becomes ready, and how much memory it holds idle.

Measures, with the embedded PostgreSQL (no settings but a data directory and a port):

* **cold start** — a fresh data directory: initdb, PostgreSQL start, every migration, default
  blueprints, app creation, until ``/-/health/ready/`` answers 200;
* **warm start** — the same data directory again (PostgreSQL already initialised), until ready;
* **warm start, 2 workers** — the same with ``--workers 2``;
* **idle RSS** — once ready and after a short settle, the resident memory of each worker process,
  measured apart from the supervising parent (with ``--workers 2``) and from PostgreSQL's processes;
* **stop** — SIGTERM until the process exits, and that no PostgreSQL process remains.

Every round runs all kinds one after the other (interleaved), so that machine noise hits them alike;
a fixed CPU-bound calibration loop is timed in each round to show that noise. Medians and
[min-max] are printed and written to ``bench/results/startup.json``.

Targets (issue 2): warm start to ready <= 3 s; idle RSS <= 150 MiB per worker.

    python bench/startup.py [--rounds 5] [--settle 2] [--output bench/results/startup.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
KEYSTAGE = Path(sys.executable).parent / "keystage"
MIB = 1024 * 1024
TARGET_WARM_S = 3.0
TARGET_RSS_MIB = 150.0
KINDS = ("cold", "warm", "warm_2_workers")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTAGE_", "_KEYSTAGE_"))}
    env["KEYSTAGE_DATA_DIR"] = str(data_dir)
    env["KEYSTAGE_LOG_LEVEL"] = "WARNING"
    return env


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    pid_file = data_dir / "postgres" / "postmaster.pid"
    try:
        main = psutil.Process(int(pid_file.read_text().split()[0]))
        return [main, *main.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def leftover_postgres(data_dir: Path) -> list[int]:
    needle = str(data_dir.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(needle in part for part in proc.info["cmdline"] or ()):
                found.append(proc.pid)
    return found


def rss(processes: list[psutil.Process]) -> float:
    total = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / MIB


def run_once(data_dir: Path, workers: int, settle: float) -> dict[str, Any]:
    """Start ``keystage serve``, time it to ready, measure memory idle, stop it; return the figures."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/-/health/ready/"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(KEYSTAGE), "serve", "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
        env=clean_env(data_dir), cwd=data_dir.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        while not ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"keystage serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.perf_counter() - started > 120:
                raise RuntimeError("keystage serve not ready after 120 s")
            time.sleep(0.02)
        to_ready = time.perf_counter() - started

        time.sleep(settle)
        parent = psutil.Process(proc.pid)
        if workers == 1:
            worker_procs = [parent]  # the HTTP server runs in the parent process itself
        else:
            worker_procs = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
            if len(worker_procs) != workers:
                raise RuntimeError(f"expected {workers} worker processes, found {len(worker_procs)}")
        figures: dict[str, Any] = {
            "to_ready_s": to_ready,
            "worker_rss_mib": [rss([w]) for w in worker_procs],
            "parent_rss_mib": rss([parent]) if workers > 1 else None,
            "postgres_rss_mib": rss(postgres_processes(data_dir)),
        }

        stop_started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        figures["stop_s"] = time.perf_counter() - stop_started
        figures["exit_code"] = code
        figures["postgres_left"] = leftover_postgres(data_dir)
        return figures
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def calibrate() -> float:
    """Seconds for a fixed amount of single-core CPU work: its spread across rounds is the machine's noise."""
    started = time.perf_counter()
    digest = b"keystage"
    for _ in range(300_000):
        digest = hashlib.sha256(digest).digest()
    return time.perf_counter() - started


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of every kind (default 5)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring memory")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    args = parser.parse_args()

    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    calibration: list[float] = []
    for round_number in range(1, args.rounds + 1):
        # Outside /tmp/pytest-of-*; world-traversable, since as root PostgreSQL runs as another user.
        parent = Path(tempfile.mkdtemp(prefix="keystage-bench-"))
        parent.chmod(0o755)
        data_dir = parent / "data"
        try:
            calibration.append(calibrate())
            samples["cold"].append(run_once(data_dir, 1, args.settle))
            samples["warm"].append(run_once(data_dir, 1, args.settle))
            samples["warm_2_workers"].append(run_once(data_dir, 2, args.settle))
        finally:
            shutil.rmtree(parent, ignore_errors=True)
        line = ", ".join(f"{kind} {samples[kind][-1]['to_ready_s']:.2f} s" for kind in KINDS)
        print(f"round {round_number}/{args.rounds}: {line}", file=sys.stderr)

    results: dict[str, Any] = {"kinds": {}}
    for kind in KINDS:
        runs = samples[kind]
        results["kinds"][kind] = {
            "to_ready_s": summary([r["to_ready_s"] for r in runs]),
            "worker_rss_mib": summary([w for r in runs for w in r["worker_rss_mib"]]),
            "parent_rss_mib": summary([r["parent_rss_mib"] for r in runs]) if runs[0]["parent_rss_mib"] else None,
            "postgres_rss_mib": summary([r["postgres_rss_mib"] for r in runs]),
            "stop_s": summary([r["stop_s"] for r in runs]),
            "clean_stops": sum(1 for r in runs if r["exit_code"] == 0 and not r["postgres_left"]),
            "runs": runs,
        }
    noise = summary(calibration)
    noise["spread_percent"] = 100 * (noise["max"] - noise["min"]) / noise["median"]
    warm_median = results["kinds"]["warm"]["to_ready_s"]["median"]
    worst_rss = max(results["kinds"][k]["worker_rss_mib"]["median"] for k in KINDS)
    results.update({
        "targets": {
            "warm_start_s": {"target": TARGET_WARM_S, "median": warm_median, "met": warm_median <= TARGET_WARM_S},
            "worker_rss_mib": {"target": TARGET_RSS_MIB, "median": worst_rss, "met": worst_rss <= TARGET_RSS_MIB},
        },
        "noise": {"calibration_s": noise, "loadavg_after": os.getloadavg()},
        "machine": {
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_mib": round(psutil.virtual_memory().total / MIB),
        },
        "keystage_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rounds": args.rounds, "settle_s": args.settle,
    })

    print_table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(s: dict[str, float] | None, unit: str, digits: int) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} {unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def print_table(results: dict[str, Any]) -> None:
    header = ("kind", "to ready", "RSS per worker", "parent RSS", "PostgreSQL RSS", "stop", "clean stops")
    rows = [header]
    for kind, r in results["kinds"].items():
        rows.append((
            kind, _fmt(r["to_ready_s"], "s", 2), _fmt(r["worker_rss_mib"], "MiB", 0),
            _fmt(r["parent_rss_mib"], "MiB", 0), _fmt(r["postgres_rss_mib"], "MiB", 0),
            _fmt(r["stop_s"], "s", 2), f"{r['clean_stops']}/{r['to_ready_s']['n']}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    noise = results["noise"]["calibration_s"]
    print(f"\nmedian [min-max] of {results['rounds']} interleaved rounds; "
          f"machine noise: calibration loop {_fmt(noise, 's', 3)}, spread {noise['spread_percent']:.0f} %, "
          f"load average after {results['noise']['loadavg_after'][0]:.2f}")
    for name, target in results["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        print(f"target {name}: median {target['median']:.2f} <= {target['target']:g}: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
