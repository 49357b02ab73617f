"""Expression sandbox benchmarks (not a test): one evaluation, batches, 1,000 bindings for one user.

(a) single: one expression binding evaluated through ``policy_engine.evaluate`` (what planning
    does), a new ``PolicyRequest`` each time, p50/p90 per call. Two typical policies:
    ``ip_attr`` (IP range and a user attribute: no database query) and ``group``
    (``is_group_member``: the user's group names, one query per user version, then cached).
    For reference, ``raw``: ``Sandbox.evaluate`` alone with a ready context. Target: p50 <= 150 µs.
(b) batch: ``evaluate_many`` of 100 policies x 200 users (20,000 pairs, a context per user),
    spread over the pool (one round trip per worker). Target: >= 20,000 evaluations/s on 2 cores.
    ``batch_users``: the worst case for context handling, 1 policy x 20,000 users (every pair
    its own context, frozen into read-only views in the worker).
(c) bindings: 1,000 distinct expression policies checked for one user, as the application
    library will do, with ``ExpressionPolicy.passes_many``: the policy objects built from their
    configs (validation, compile-cache lookups), one context for the user, one ``evaluate_many``.
    Target: p50 <= 25 ms. ``bindings_sequential``: the same through ``policy_engine.evaluate``
    one binding at a time, for comparison.

Everything is interleaved per round; reported are medians with [min-max] over rounds, and the
noise: a fixed CPU-bound calibration loop per round and the CPU the rest of the machine used.

Database: ``KEYSTAGE_DATABASE_URL`` names a server (a scratch database is created and dropped);
without it an embedded PostgreSQL runs in ``$BENCH_HOME/sandbox-pg``.

    python bench/sandbox.py                 # about 40 s
    python bench/sandbox.py --rounds 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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
TICK = os.sysconf("SC_CLK_TCK")

POLICIES = {
    "ip_attr": "return request.ip in ip_network('10.0.0.0/8') and request.user.attributes.get('department') == 'it'",
    "group": "return is_group_member(request.user, 'staff')",
}


def machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def own_cpu(pool: Any) -> float:
    total = time.process_time()
    for worker in pool._workers:
        try:
            fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def calibrate() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i * i
    return time.perf_counter() - started


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def fmt(s: dict[str, Any], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Database:
    def __init__(self) -> None:
        self.embedded: Any = None
        server = os.environ.get("KEYSTAGE_DATABASE_URL")
        if not server:
            from keystage.engine.embedded import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(Path(os.environ.get("BENCH_HOME", "/tmp/keystage-bench")) / "sandbox-pg")
            server = self.embedded.start()
        self.server = server
        self.name = f"keystage_bench_sandbox_{secrets.token_hex(4)}"
        self.url = urlunsplit(urlsplit(server)._replace(path=f"/{self.name}"))

    async def admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


async def prepare(ks: Any, users: int) -> dict[str, Any]:
    staff = await ks.users.create_group("staff")
    alice = await ks.users.create("alice", email="alice@example.com", attributes={"department": "it", "level": 5})
    await ks.users.add_member(staff.id, alice.id)
    contexts = []
    for i in range(users):
        contexts.append({
            "user": {"username": f"user{i}", "email": f"user{i}@example.com", "name": f"User {i}", "is_active": True,
                     "is_superuser": False, "attributes": {"department": "it" if i % 2 else "sales", "level": i % 10},
                     "groups": ["staff"] if i % 3 else ["contractors"]},
            "ip": f"10.0.{i % 250}.{i % 200 + 1}", "user_agent": "Mozilla/5.0",
        })
    many = [{**contexts[i % users], "user": {**contexts[i % users]["user"], "username": f"u{i}"}}
            for i in range(20_000)]
    return {"alice": alice, "contexts": contexts, "many": many}


def binding(index: int, source: str) -> Any:
    from keystage.engine.policy_engine import Binding

    return Binding(id=index, order=index, enabled=True, negate=False, timeout=30, failure_result=False,
                   policy_name=f"bench-{index}", policy_type="expression", policy_config={"expression": source})


def policy_request(ks: Any, user: Any) -> Any:
    from keystage.engine.policy import PolicyRequest
    from keystage.engine.request_info import RequestInfo

    info = RequestInfo(client_ip="10.1.2.3", user_agent="Mozilla/5.0", locale="en", path="/flows/x/",
                       headers={"accept": "*/*"})
    return PolicyRequest(keystage=ks, user=user, request=info, context={"pending_user": user.id})


async def single(ks: Any, pool: Any, data: dict[str, Any], count: int) -> dict[str, Any]:
    from keystage.engine import policy_engine

    out: dict[str, Any] = {}
    for name, source in POLICIES.items():
        bindings = [binding(1, source)]
        samples = []
        for _ in range(count):
            request = policy_request(ks, data["alice"])
            started = time.perf_counter()
            result = await policy_engine.evaluate(ks, bindings, "all", request)
            samples.append(time.perf_counter() - started)
            assert result.passing, result
        out[name] = {"p50_us": percentile(samples, 0.5) * 1e6, "p90_us": percentile(samples, 0.9) * 1e6}
    context = data["contexts"][1]
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await pool.evaluate(POLICIES["ip_attr"], context=context)
        samples.append(time.perf_counter() - started)
    out["raw"] = {"p50_us": percentile(samples, 0.5) * 1e6, "p90_us": percentile(samples, 0.9) * 1e6}
    return out


def typical(i: int) -> str:
    return (f"return request.user.attributes.get('level', 0) >= {i % 10} and "
            f"(is_group_member(request.user, 'staff') or request.ip in ip_network('10.0.{i}.0/24'))")


async def batch(pool: Any, data: dict[str, Any], users: bool = False) -> dict[str, Any]:
    if users:
        items = [(typical(7), context) for context in data["many"]]
    else:
        sources = [typical(i) for i in range(100)]
        items = [(source, context) for context in data["contexts"] for source in sources]
    cpu, busy = own_cpu(pool), machine_busy()
    started = time.perf_counter()
    results = await pool.evaluate_many(items)
    wall = time.perf_counter() - started
    cpu, busy = own_cpu(pool) - cpu, machine_busy() - busy
    assert all(not isinstance(r, Exception) for r in results), next(r for r in results if isinstance(r, Exception))
    return {"items": len(items), "per_s": len(items) / wall, "wall_s": wall, "cpu_s": cpu,
            "other_cores": max(0.0, busy - cpu) / wall}


async def bindings(ks: Any, pool: Any, data: dict[str, Any], repeats: int) -> dict[str, Any]:
    from keystage.engine import policy_engine
    from keystage.plugins.policies.expression import ExpressionPolicy

    sources = [f"return is_group_member(request.user, 'team-{i}') or "
               f"request.user.attributes.get('level', 0) >= {i % 10}" for i in range(1000)]
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        request = policy_request(ks, data["alice"])
        policies = [ExpressionPolicy(f"p{i}", ExpressionPolicy.validate_config({"expression": source}))
                    for i, source in enumerate(sources)]
        results = await ExpressionPolicy.passes_many(policies, request)
        samples.append(time.perf_counter() - started)
        assert sum(1 for r in results if r.passing) == 600, results[:3]  # levels 0-5 of every 10
    sequential = []
    targets = [[binding(i, source)] for i, source in enumerate(sources)]
    for _ in range(2):
        request = policy_request(ks, data["alice"])
        started = time.perf_counter()
        for target in targets:
            await policy_engine.evaluate(ks, target, "all", request)
        sequential.append(time.perf_counter() - started)
    return {"p50_ms": statistics.median(samples) * 1000, "min_ms": min(samples) * 1000,
            "sequential_ms": statistics.median(sequential) * 1000}


async def run(args: argparse.Namespace, db: Database) -> dict[str, Any]:
    from keystage.engine.config import load_settings
    from keystage.engine.runtime import Keystage
    from keystage.engine.sandbox import get_sandbox

    with tempfile.TemporaryDirectory(prefix="keystage-bench-sandbox-") as data_dir:
        settings = load_settings({"KEYSTAGE_DATABASE_URL": db.url, "KEYSTAGE_DATA_DIR": data_dir,
                                  "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "false"})
        ks = Keystage(settings)
        await ks.open()
        try:
            pool = get_sandbox(ks)
            await pool.start()
            data = await prepare(ks, 200)
            # Warm up: compile caches on the host, code caches in every worker.
            await single(ks, pool, data, 200)
            await batch(pool, data)
            await bindings(ks, pool, data, 2)
            rounds = []
            for number in range(args.rounds):
                busy, mine = machine_busy(), own_cpu(pool)
                started = time.perf_counter()
                one = {"calibration_s": calibrate(), "single": await single(ks, pool, data, args.single),
                       "batch": await batch(pool, data), "batch_users": await batch(pool, data, users=True),
                       "bindings": await bindings(ks, pool, data, args.repeats)}
                # PostgreSQL's share (the group-name queries) counts as "other" here: it is small.
                one["load_other_cores"] = max(0.0, (machine_busy() - busy) - (own_cpu(pool) - mine)) / (
                    time.perf_counter() - started)
                rounds.append(one)
                print(f"round {number + 1}/{args.rounds}: single ip_attr p50 "
                      f"{one['single']['ip_attr']['p50_us']:.0f} µs, "
                      f"batch {one['batch']['per_s']:.0f}/s, 1,000 bindings {one['bindings']['p50_ms']:.1f} ms",
                      file=sys.stderr)
            stats = dict(pool.stats)
        finally:
            pool = ks.state.get("sandbox")
            if pool is not None:
                await pool.close()
            await ks.close()
    return {"rounds": rounds, "pool": stats, "workers": pool.size if pool else None}


def report(raw: dict[str, Any]) -> dict[str, Any]:
    rounds = raw["rounds"]
    pick = lambda f: summary([f(r) for r in rounds])  # noqa: E731
    calibration = pick(lambda r: r["calibration_s"])
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg(),
                    "calibration_spread_pct": 100 * (calibration["max"] - calibration["min"]) / calibration["min"]},
        "workers": raw["workers"],
        "single_ip_attr_p50_us": pick(lambda r: r["single"]["ip_attr"]["p50_us"]),
        "single_ip_attr_p90_us": pick(lambda r: r["single"]["ip_attr"]["p90_us"]),
        "single_group_p50_us": pick(lambda r: r["single"]["group"]["p50_us"]),
        "single_group_p90_us": pick(lambda r: r["single"]["group"]["p90_us"]),
        "raw_evaluate_p50_us": pick(lambda r: r["single"]["raw"]["p50_us"]),
        "batch_per_s": pick(lambda r: r["batch"]["per_s"]),
        "batch_cpu_s_per_10k": pick(lambda r: r["batch"]["cpu_s"] / r["batch"]["items"] * 10_000),
        "batch_users_per_s": pick(lambda r: r["batch_users"]["per_s"]),
        "bindings_1000_p50_ms": pick(lambda r: r["bindings"]["p50_ms"]),
        "bindings_1000_sequential_ms": pick(lambda r: r["bindings"]["sequential_ms"]),
        "calibration_s": calibration,
        "other_cores_busy": pick(lambda r: r["load_other_cores"]),
        "targets": {"single_p50_us": 150, "batch_per_s": 20_000, "bindings_1000_p50_ms": 25},
        "pool": raw["pool"],
        "raw": rounds,
    }
    return out


def print_report(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(f"machine: {m['cpus']} CPUs, Python {m['python']}, load {m['loadavg'][0]:.1f}, "
          f"calibration spread {m['calibration_spread_pct']:.0f} %, other cores busy "
          f"{fmt(out['other_cores_busy'], 2)}; {out['workers']} sandbox workers")
    print("single evaluation through policy_engine.evaluate (target p50 <= 150 µs):")
    print(f"  ip_attr  p50 {fmt(out['single_ip_attr_p50_us'], 0)} µs   p90 {fmt(out['single_ip_attr_p90_us'], 0)} µs")
    print(f"  group    p50 {fmt(out['single_group_p50_us'], 0)} µs   p90 {fmt(out['single_group_p90_us'], 0)} µs"
          "   (group names: one query per user version, then cached)")
    print(f"  raw Sandbox.evaluate p50 {fmt(out['raw_evaluate_p50_us'], 0)} µs")
    print(f"batch evaluate_many, 20,000 pairs (target >= 20,000/s): {fmt(out['batch_per_s'], 0)} /s"
          f"   CPU {fmt(out['batch_cpu_s_per_10k'], 3)} s per 10k (host + workers)")
    print(f"  1 policy x 20,000 users (a context each): {fmt(out['batch_users_per_s'], 0)} /s")
    print(f"1,000 bindings for one user (target p50 <= 25 ms): {fmt(out['bindings_1000_p50_ms'], 1)} ms"
          f"   (one by one through policy_engine: {fmt(out['bindings_1000_sequential_ms'], 0)} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=2000, help="single evaluations per policy per round")
    parser.add_argument("--repeats", type=int, default=20, help="1,000-binding checks per round")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "sandbox.json")
    args = parser.parse_args()
    db = Database()
    asyncio.run(db.admin(f'CREATE DATABASE "{db.name}"'))
    try:
        raw = asyncio.run(run(args, db))
    finally:
        asyncio.run(db.admin(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)'))
        if db.embedded is not None:
            db.embedded.stop()
    out = report(raw)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print_report(out)
    text_path = args.output.with_suffix(".txt")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_report(out)
    text_path.write_text(buffer.getvalue())


if __name__ == "__main__":
    main()
