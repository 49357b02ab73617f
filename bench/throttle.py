"""Brute-force check benchmark (not a test): what ``Throttle.check`` costs per login attempt.

Cases, each with PostgreSQL alone and with Redis (``--redis``, default redis://127.0.0.1:6379/15):

* ``check_clean`` — a client with no recent failures (the common case): ``check`` then ``succeeded``, the
  whole cost a normal login pays (read the counters, take and free the in-flight places).
* ``check_counted`` — a client whose (identifier, IP), IP and identifier counters all exist (``check``
  then ``release``).
* ``failed`` — counting one failure (attackers pay this; users who mistype too).

Timed one call at a time in this process, after a warm-up: wall time p50/p90 per call, and CPU
per call (``time.process_time``: the client-side share, the part that scales with workers).
Rounds are interleaved so machine noise hits every case alike. Targets (issue 7): check p50
< 1 ms with Redis, < 2 ms with PostgreSQL.

Database: ``KEYSTAGE_DATABASE_URL`` names a server (a scratch database is created and dropped);
default postgresql://postgres@127.0.0.1:5432/postgres.

    python bench/throttle.py                  # about 20 s
    python bench/throttle.py --rounds 7 --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HERE = Path(__file__).resolve().parent


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def measure(call: Any, calls: int) -> dict[str, float]:
    walls = []
    cpu0 = time.process_time()
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / calls
    walls.sort()
    return {"p50_ms": walls[len(walls) // 2] * 1000, "p90_ms": walls[int(len(walls) * 0.9)] * 1000,
            "cpu_ms": cpu * 1000}


async def run(args: argparse.Namespace, database_url: str) -> dict[str, Any]:
    from keystage.engine.config import load_settings
    from keystage.engine.runtime import Keystage
    from keystage.engine.throttle import Throttle

    results: dict[str, list[dict[str, float]]] = {}
    kernels = {}
    with tempfile.TemporaryDirectory() as data:
        for store in ("postgres", "redis"):
            env = {"KEYSTAGE_DATABASE_URL": database_url, "KEYSTAGE_DATA_DIR": data,
                   "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "false"}
            if store == "redis":
                env["KEYSTAGE_REDIS_URL"] = args.redis
            kernel = Keystage(load_settings(env))
            await kernel.open()
            kernels[store] = (kernel, Throttle(kernel))
        try:
            pg_throttle = kernels["postgres"][1]
            counted = ("bench-counted", "192.0.2.77")
            for _ in range(3):
                await pg_throttle.failed(await pg_throttle.check(username=counted[0], ip=counted[1]))
            for kernel, throttle in kernels.values():
                await throttle.check(username="warm", ip="192.0.2.1")  # marker, connections
                if throttle._warming is not None:
                    await throttle._warming
            for _ in range(args.rounds):
                for store, (_kernel, throttle) in kernels.items():
                    async def clean(t: Throttle = throttle) -> None:
                        await t.succeeded(await t.check(username=f"user{secrets.randbelow(10**6)}", ip="198.51.100.9"))

                    async def known(t: Throttle = throttle) -> None:
                        await t.release(await t.check(username=counted[0], ip=counted[1]))

                    async def fail(t: Throttle = throttle) -> None:
                        await t.failed(await t.check(username=f"x{secrets.randbelow(10**9)}",
                                                     ip=f"203.0.113.{secrets.randbelow(250)}"))

                    for case, call, calls in (("check_clean", clean, args.calls), ("check_counted", known, args.calls),
                                              ("failed", fail, max(50, args.calls // 10))):
                        results.setdefault(f"{store}:{case}", []).append(await measure(call, calls))
        finally:
            for kernel, throttle in kernels.values():
                await throttle.close()
                await kernel.close()
    return results


def report(raw: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, rounds in raw.items():
        out[key] = {metric: {"median": statistics.median(r[metric] for r in rounds),
                             "min": min(r[metric] for r in rounds), "max": max(r[metric] for r in rounds)}
                    for metric in rounds[0]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "throttle.json")
    args = parser.parse_args()
    server = os.environ.get("KEYSTAGE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"keystage_bench_throttle_{secrets.token_hex(3)}"
    asyncio.run(admin(server, f'CREATE DATABASE "{name}"'))
    try:
        raw = asyncio.run(run(args, with_database(server, name)))
    finally:
        asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    out = report(raw)
    lines = [f"{'case':<24} {'p50 ms':>18} {'p90 ms':>18} {'CPU ms/call':>18}"]
    for key, metrics in out.items():
        cells = [f"{m['median']:.3f} [{m['min']:.3f}-{m['max']:.3f}]" for m in metrics.values()]
        lines.append(f"{key:<24} " + " ".join(f"{c:>18}" for c in cells))
    lines.append(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"summary": out, "rounds": raw}, indent=2))
    args.output.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
