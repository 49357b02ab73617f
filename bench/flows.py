"""Flow benchmarks (not a test): uncached planning, and password logins per second against Argon2id.

(a) planning: ``load_flow`` + ``planner.plan`` of ``default-authentication-flow`` in this process,
    against a real PostgreSQL, one plan at a time; p50/p90 per plan. Target: p50 <= 2 ms.
(b) logins: ``keystage serve --workers 2`` driven through the JSON face by an asyncio httpx client
    at a few concurrencies. One login = GET + identification + password + user_login, with a fresh
    cookie jar, round-robin over N pre-created users. Compared with the Argon2id verifications per
    second that 2 processes manage with the same parameters, measured in the same run.
    Target: logins/s >= 85 % of that.

Everything is interleaved: each round runs a planning batch, the Argon2id measurement and every
login case, so that machine noise hits all of them alike. Reported: medians with [min-max] over
rounds, ratios taken per round, and the noise — the CPU the rest of the machine used meanwhile
(machine busy time minus the keystage server tree, this driver and PostgreSQL).

Database: ``KEYSTAGE_DATABASE_URL`` names a server (a scratch database is created on it and dropped
afterwards); without it an embedded PostgreSQL runs in ``$BENCH_HOME/flows-pg``.

    python bench/flows.py                                    # about 1.5 min with the defaults
    python bench/flows.py --rounds 5 --seconds 8 --concurrency 2,4,8,16
    python bench/flows.py --store redis                      # sessions and plans in Redis
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

HERE = Path(__file__).resolve().parent
KEYSTAGE = Path(sys.executable).parent / "keystage"
FLOW = "default-authentication-flow"
EXECUTOR = f"/api/v1/flows/{FLOW}/executor"
PASSWORD = "correct horse battery staple"
TICK = os.sysconf("SC_CLK_TCK")


# -- machine accounting (from /proc, as shared/bench/httpbench.py does) -------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))):
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        if fields := _stat_fields(pid):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def named_pids(*names: str) -> list[int]:
    """Processes whose command name is one of ``names`` (redis-server)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                out.append(int(entry))
    return out


def machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


class Meter:
    """Wall time, this process's CPU, a server tree's CPU, the datastores' CPU and the rest of the machine."""

    def __init__(self, server_pid: int | None, store_pids: list[int], helpers: list[int] | tuple[()] = ()) -> None:
        self.server_pid = server_pid
        self.store_pids = store_pids  # this database's PostgreSQL backends, redis-server
        self.helpers = list(helpers)  # processes of ours outside process_time (the Argon2id pool)

    def _sample(self) -> tuple[float, ...]:
        server = cpu_seconds(proc_tree(self.server_pid)) if self.server_pid else 0.0
        return (time.perf_counter(), time.process_time() + cpu_seconds(self.helpers), server,
                cpu_seconds(self.store_pids), machine_busy())

    def __enter__(self) -> Meter:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._sample()
        wall, me, server, stores, busy = (b - a for a, b in zip(self._start, end))
        self.wall, self.driver, self.server, self.stores = wall, me, server, stores
        self.other_cores = max(0.0, busy - me - server - stores) / wall


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def fmt(s: dict[str, Any], unit: str = "", digits: int = 1) -> str:
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


# -- database ------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Database:
    """A scratch database on the configured server, or on an embedded one."""

    def __init__(self) -> None:
        self.embedded: Any = None
        server = os.environ.get("KEYSTAGE_DATABASE_URL")
        if not server:
            from keystage.engine.embedded import EmbeddedPostgres

            home = Path(os.environ.get("BENCH_HOME", "/tmp/keystage-bench"))
            self.embedded = EmbeddedPostgres(home / "flows-pg")
            server = self.embedded.start()
        self.server = server
        self.name = f"keystage_bench_flows_{secrets.token_hex(4)}"
        self.url = with_database(server, self.name)

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        if self.embedded is not None:
            self.embedded.stop()


def settings_for(database_url: str, data_dir: Path, redis_url: str | None) -> Any:
    from keystage.engine.config import load_settings

    env = {k: v for k, v in os.environ.items() if k.startswith("KEYSTAGE_")}
    env.update({"KEYSTAGE_DATABASE_URL": database_url, "KEYSTAGE_DATA_DIR": str(data_dir)})
    if redis_url:
        env["KEYSTAGE_REDIS_URL"] = redis_url
    else:
        env.pop("KEYSTAGE_REDIS_URL", None)
    return load_settings(env)


async def prepare(kernel: Any, users: int) -> None:
    """Defaults applied, ``users`` users sharing one password hash (hashing each would take minutes)."""
    from keystage.engine.blueprints import apply_defaults

    await apply_defaults(kernel)
    first = await kernel.users.create("bench0", password=PASSWORD)
    await kernel.pool.execute(
        """INSERT INTO users (username, password_hash, password_changed_at)
           SELECT 'bench' || i, (SELECT password_hash FROM users WHERE id = $1), now()
           FROM generate_series(1, $2 - 1) AS i""", first.id, users)


# -- (a) planning ----------------------------------------------------------------------------


async def plan_batch(kernel: Any, count: int) -> dict[str, float]:
    from keystage.engine.flows import load_flow
    from keystage.engine.planner import Plan, plan

    times = []
    cpu0 = time.process_time()
    for _ in range(count):
        t0 = time.perf_counter()
        flow = await load_flow(kernel, FLOW)
        result = await plan(kernel, flow, user=None, request=None, redirect="/")
        times.append(time.perf_counter() - t0)
        assert isinstance(result, Plan) and len(result.stages) == 3, result
    cpu = (time.process_time() - cpu0) / count
    q = statistics.quantiles(times, n=10)
    return {"p50_ms": statistics.median(times) * 1e3, "p90_ms": q[8] * 1e3, "cpu_ms": cpu * 1e3}


# -- (b) Argon2id with the same parameters, 2 processes ---------------------------------------

_ARGON: dict[str, Any] = {}


def _argon_worker(seconds: float) -> tuple[float, float]:
    """Verifications per second of wall time, and CPU seconds per verification, in one process."""
    hasher, encoded = _ARGON["hasher"], _ARGON["hash"]
    hasher.verify(encoded, PASSWORD)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds:
        hasher.verify(encoded, PASSWORD)
        n += 1
    return n / elapsed, (time.process_time() - c0) / max(n, 1)


def argon_setup(settings: Any) -> dict[str, Any]:
    import argon2

    hasher = argon2.PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_cost,
                                   parallelism=settings.argon2_parallelism, type=argon2.Type.ID)
    _ARGON.update(hasher=hasher, hash=hasher.hash(PASSWORD))
    return {"time_cost": hasher.time_cost, "memory_cost_kib": hasher.memory_cost, "parallelism": hasher.parallelism}


# -- (b) logins through the JSON face ------------------------------------------------------------


class LoginDriver:
    def __init__(self, base: str, users: int) -> None:
        self.base = base
        self.users = users
        self.next_user = 0
        self.transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=256,
                                                                      max_keepalive_connections=256))

    async def login(self) -> float:
        """One full login with a fresh cookie jar; returns its latency in seconds."""
        user = f"bench{self.next_user % self.users}"
        self.next_user += 1
        # A client per login is a fresh cookie jar; the shared transport keeps the connections.
        client = httpx.AsyncClient(transport=self.transport, base_url=self.base, trust_env=False, timeout=30)
        t0 = time.perf_counter()
        r = await client.get(EXECUTOR + "?next=/")
        assert r.json()["component"] == "identification", r.text
        r = await client.post(EXECUTOR, json={"component": "identification", "uid_field": user})
        assert r.json()["component"] == "password", r.text
        r = await client.post(EXECUTOR, json={"component": "password", "password": PASSWORD})
        assert r.json()["component"] == "user_login", r.text
        r = await client.post(EXECUTOR, json={"component": "user_login"})
        assert r.json() == {"component": "redirect", "to": "/"}, r.text
        return time.perf_counter() - t0

    async def run(self, concurrency: int, seconds: float) -> dict[str, Any]:
        latencies: list[float] = []
        errors: list[str] = []
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                try:
                    latencies.append(await self.login())
                except Exception as exc:  # noqa: BLE001 - counted and shown, never hidden
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        return {"logins": len(latencies), "wall": wall, "latencies": latencies, "errors": errors}


def free_port(preferred: int) -> int:
    for port in range(preferred, 19100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port in 19000-19099")


def start_server(settings_env: dict[str, str], port: int, workers: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    proc = subprocess.Popen([str(KEYSTAGE), "serve", "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                            env=settings_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"keystage serve exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/health/ready/", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"keystage serve not ready after 60 s; see {log_path}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- the run ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, db: Database, scratch: Path) -> dict[str, Any]:
    from keystage.engine.runtime import Keystage

    redis_url = args.redis_url if args.store == "redis" else None
    settings = settings_for(db.url, scratch / "kernel", redis_url)
    argon_params = argon_setup(settings)
    # Forked before this process has an event loop's worth of threads and sockets.
    pool = mp.get_context("fork").Pool(2)
    pool_pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
    kernel = Keystage(settings)
    server: subprocess.Popen[bytes] | None = None
    try:
        await kernel.open(migrate=True)
        await prepare(kernel, args.users)
        env = {k: v for k, v in os.environ.items() if not k.startswith("_KEYSTAGE_")}
        env.update({"KEYSTAGE_DATABASE_URL": db.url, "KEYSTAGE_DATA_DIR": str(scratch / "serve"),
                    "KEYSTAGE_LOG_LEVEL": args.log_level})
        env.pop("KEYSTAGE_REDIS_URL", None)
        if redis_url:
            env["KEYSTAGE_REDIS_URL"] = redis_url
        port = free_port(args.port)
        server = start_server(env, port, args.workers, scratch / "serve.log")
        results = await measure(args, kernel, server, pool, pool_pids, f"http://127.0.0.1:{port}",
                                named_pids("redis-server") if redis_url else [])
    finally:
        pool.terminate()
        if server is not None:
            stop_server(server)
        await kernel.close()
    results["argon2_params"] = argon_params
    return results


async def measure(args: argparse.Namespace, kernel: Any, server: subprocess.Popen[bytes], pool: Any,
                  pool_pids: list[int], base: str, redis_pids: list[int]) -> dict[str, Any]:
    driver = LoginDriver(base, args.users)

    async def store_pids() -> list[int]:
        # The backends of this database, asked for just before each measurement (the pools are warm).
        rows = await kernel.pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [r["pid"] for r in rows] + redis_pids

    results: dict[str, Any] = {"planning": [], "argon2": [], "logins": {c: [] for c in args.concurrency}}
    # Warm-up, not recorded: first connections, prepared statements, both workers' imports.
    await plan_batch(kernel, 50)
    pool.map(_argon_worker, [0.3, 0.3])
    await driver.run(max(args.concurrency), args.warmup)
    with Meter(server.pid, await store_pids()) as idle:
        await asyncio.sleep(1.0)
    results["idle_other_cores"] = idle.other_cores
    for round_no in range(args.rounds):
        with Meter(server.pid, await store_pids()) as meter:
            batch = await plan_batch(kernel, args.plans)
        batch["other_cores"] = meter.other_cores
        results["planning"].append(batch)

        with Meter(server.pid, await store_pids(), helpers=pool_pids) as meter:
            answers = pool.map(_argon_worker, [args.argon_seconds, args.argon_seconds])
        results["argon2"].append({"verify_per_s": sum(a[0] for a in answers), "per_process": [a[0] for a in answers],
                                  "cpu_ms_per_verify": statistics.mean(a[1] for a in answers) * 1e3,
                                  "other_cores": meter.other_cores})

        shift = round_no % len(args.concurrency)
        for conc in args.concurrency[shift:] + args.concurrency[:shift]:
            with Meter(server.pid, await store_pids()) as meter:
                outcome = await driver.run(conc, args.seconds)
            n = max(outcome["logins"], 1)
            lat = sorted(outcome["latencies"]) or [0.0]
            results["logins"][conc].append({
                "round": round_no, "logins": outcome["logins"], "errors": len(outcome["errors"]),
                "error_samples": outcome["errors"][:3], "logins_per_s": outcome["logins"] / outcome["wall"],
                "p50_ms": statistics.median(lat) * 1e3, "p90_ms": lat[int(0.9 * (len(lat) - 1))] * 1e3,
                "server_cpu_ms_per_login": meter.server / n * 1e3,
                "driver_cpu_ms_per_login": meter.driver / n * 1e3,
                "datastore_cpu_ms_per_login": meter.stores / n * 1e3,
                "other_cores": meter.other_cores,
            })
            print(f"round {round_no + 1}/{args.rounds} c={conc}: {outcome['logins'] / outcome['wall']:.1f} logins/s, "
                  f"argon2 2p {results['argon2'][-1]['verify_per_s']:.1f}/s, plan p50 {batch['p50_ms']:.3f} ms",
                  file=sys.stderr, flush=True)
    return results


def report(args: argparse.Namespace, raw: dict[str, Any], loadavg: str) -> dict[str, Any]:
    planning = raw["planning"]
    argon = [r["verify_per_s"] for r in raw["argon2"]]
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": loadavg,
                    "idle_other_cores": raw["idle_other_cores"]},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "plans_per_round": args.plans,
                     "users": args.users, "workers": args.workers, "store": args.store,
                     "log_level": args.log_level, "argon2": raw["argon2_params"]},
        "planning": {
            "p50_ms": summary([r["p50_ms"] for r in planning]), "p90_ms": summary([r["p90_ms"] for r in planning]),
            "cpu_ms_per_plan": summary([r["cpu_ms"] for r in planning]),
            "other_cores": summary([r["other_cores"] for r in planning]), "target_p50_ms": 2.0,
        },
        "argon2_2proc_verify_per_s": summary(argon),
        "argon2_cpu_ms_per_verify": summary([r["cpu_ms_per_verify"] for r in raw["argon2"]]),
        "argon2_other_cores": summary([r["other_cores"] for r in raw["argon2"]]),
        "logins": {},
    }
    out["planning"]["meets_target"] = out["planning"]["p50_ms"]["median"] <= 2.0
    for conc, rows in raw["logins"].items():
        ratios = [row["logins_per_s"] / raw["argon2"][row["round"]]["verify_per_s"] for row in rows]
        # What the rate would be with the cores to the server alone: Argon2id CPU over server CPU per login.
        capacity = [raw["argon2"][row["round"]]["cpu_ms_per_verify"] / row["server_cpu_ms_per_login"]
                    for row in rows if row["server_cpu_ms_per_login"] > 0]
        out["logins"][str(conc)] = {
            "logins_per_s": summary([r["logins_per_s"] for r in rows]),
            "ratio_to_argon2": summary(ratios),
            "server_cpu_ratio": summary(capacity or [0.0]),
            "p50_ms": summary([r["p50_ms"] for r in rows]), "p90_ms": summary([r["p90_ms"] for r in rows]),
            "server_cpu_ms_per_login": summary([r["server_cpu_ms_per_login"] for r in rows]),
            "driver_cpu_ms_per_login": summary([r["driver_cpu_ms_per_login"] for r in rows]),
            "datastore_cpu_ms_per_login": summary([r["datastore_cpu_ms_per_login"] for r in rows]),
            "other_cores": summary([r["other_cores"] for r in rows]),
            "errors": sum(r["errors"] for r in rows),
            "error_samples": [e for r in rows for e in r["error_samples"]][:3],
        }
    best = max(out["logins"].values(), key=lambda v: v["ratio_to_argon2"]["median"])
    out["best_ratio_to_argon2"] = best["ratio_to_argon2"]["median"]
    out["meets_login_target"] = out["best_ratio_to_argon2"] >= 0.85
    return out


def print_report(out: dict[str, Any]) -> None:
    p, m = out["planning"], out["machine"]
    print(f"\nmachine: {m['cpus']} cpus, python {m['python']}, loadavg before {m['loadavg_before']}, "
          f"other load when idle {m['idle_other_cores']:.2f} cores")
    print(f"settings: {out['settings']}")
    print("\n(a) uncached planning of default-authentication-flow (load_flow + plan), per plan, median [min-max] of rounds")
    print(f"    p50 {fmt(p['p50_ms'], ' ms', 3)}  p90 {fmt(p['p90_ms'], ' ms', 3)}  "
          f"client CPU {fmt(p['cpu_ms_per_plan'], ' ms', 3)}  other load {fmt(p['other_cores'], ' cores', 2)}  "
          f"target p50 <= 2 ms: {'met' if p['meets_target'] else 'NOT met'}")
    print(f"\n(b) Argon2id verify, 2 processes: {fmt(out['argon2_2proc_verify_per_s'], '/s')}, "
          f"CPU {fmt(out['argon2_cpu_ms_per_verify'], ' ms', 2)} per verify, "
          f"other load meanwhile {fmt(out['argon2_other_cores'], ' cores', 2)}")
    print("| concurrency | logins/s | ratio to Argon2id 2p | Argon2id CPU / server CPU per login | p50 ms | p90 ms | "
          "server CPU ms/login | driver CPU ms/login | PostgreSQL/Redis CPU ms/login | other load cores | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for conc, row in out["logins"].items():
        print(f"| {conc} | {fmt(row['logins_per_s'])} | {fmt(row['ratio_to_argon2'], '', 2)} | "
              f"{fmt(row['server_cpu_ratio'], '', 2)} | "
              f"{fmt(row['p50_ms'], '', 0)} | {fmt(row['p90_ms'], '', 0)} | {fmt(row['server_cpu_ms_per_login'])} | "
              f"{fmt(row['driver_cpu_ms_per_login'])} | {fmt(row['datastore_cpu_ms_per_login'])} | "
              f"{fmt(row['other_cores'], '', 2)} | {row['errors']} |")
    print(f"best ratio {out['best_ratio_to_argon2']:.2f}; target >= 0.85: "
          f"{'met' if out['meets_login_target'] else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per login case per round")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--concurrency", default="2,4,8")
    ap.add_argument("--plans", type=int, default=2000, help="plans per round")
    ap.add_argument("--argon-seconds", type=float, default=3.0)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=19050)
    ap.add_argument("--store", choices=("postgres", "redis"), default="postgres")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--log-level", default="INFO", help="the server's KEYSTAGE_LOG_LEVEL (INFO logs each request)")
    ap.add_argument("--json", default=str(HERE / "results" / "flows.json"))
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    loadavg = Path("/proc/loadavg").read_text().split(" ", 3)[:3]
    db = Database()
    db.create()
    scratch = Path(os.environ.get("BENCH_HOME", "/tmp/keystage-bench")) / f"flows-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        raw = asyncio.run(run(args, db, scratch))
    finally:
        db.drop()
    shutil.rmtree(scratch, ignore_errors=True)  # kept after a failure: serve.log is in it
    out = report(args, raw, " ".join(loadavg))
    out["raw"] = raw
    print_report(out)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
