"""Translation cost benchmark (not a test): a flow page in a translated locale vs English.

Issue 5's target: rendering a flow page in a translated locale costs no more than 5 % over
English, because catalogs are loaded once (at app creation), not per request.

Two measurements, both in this process through the real app (``create_app``) on a real
PostgreSQL, CPU time per request (``time.process_time``):

(a) page: ``GET /flows/default-authentication-flow/`` (the identification page) through Quart's
    in-process ASGI client, one warm client (session cookie) per locale, the locale chosen by
    ``Accept-Language``. Everything a request does: session load, plan, challenge, translation,
    template, headers.
(b) render: only ``render_template("flow.html", ...)`` of the identification challenge, inside a
    request context: the part translation actually touches (gettext calls, translated labels).

Interleaved: in every round the locales take turns in small chunks (order rotated each round), for
(a), then for (b). Reported: CPU µs per request, median [min-max] over rounds; the ratio to English taken per
round, median [min-max]; and the noise (the spread of a fixed CPU loop's time across rounds,
the load average). Also counted: catalog loads (``.po`` parses) during the measured requests —
must be 0.

    KEYSTAGE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/i18n.py
    python bench/i18n.py --rounds 9 --requests 400 --locales de,ar,ja,en_XA
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HERE = Path(__file__).resolve().parent
FLOW = "default-authentication-flow"
PAGE = f"/flows/{FLOW}/"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET = 1.05


def calibrate() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i * i
    return time.perf_counter() - started


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def fmt(s: dict[str, Any], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


async def admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def measure(args: argparse.Namespace, database_url: str, data_dir: Path) -> dict[str, Any]:
    from quart import g, render_template

    from keystage.engine import i18n, web_context
    from keystage.engine.app import create_app
    from keystage.engine.config import load_settings
    from keystage.engine.sessions import Session

    loads = {"count": 0}
    compile_po = i18n._compile  # noqa: SLF001

    def counting(*a: Any, **k: Any) -> Any:
        loads["count"] += 1
        return compile_po(*a, **k)

    i18n._compile = counting  # noqa: SLF001
    settings = load_settings({"KEYSTAGE_DATABASE_URL": database_url, "KEYSTAGE_DATA_DIR": str(data_dir),
                              "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "true", "KEYSTAGE_LOG_LEVEL": "WARNING"})
    app = create_app(settings)
    loads_at_startup = loads["count"]
    locales = ["en", *args.locales]
    html = {"Accept": "text/html"}
    async with app.test_app():
        clients = {}
        challenges = {}
        for locale in locales:
            client = app.test_client()
            headers = {**html, "Accept-Language": locale.replace("_", "-")}
            response = await client.get(PAGE, headers=headers)
            assert response.status_code == 200, (locale, response.status_code)
            assert response.headers["Content-Language"] == locale.replace("_", "-"), response.headers
            clients[locale] = (client, headers)
            answer = await client.get(f"/api/v1/flows/{FLOW}/executor", headers=headers)
            challenges[locale] = await answer.get_json()
            assert challenges[locale]["component"] == "identification", challenges[locale]

        async def page_batch(locale: str, count: int) -> float:
            client, headers = clients[locale]
            started = time.process_time()
            for _ in range(count):
                response = await client.get(PAGE, headers=headers)
                await response.get_data()
            elapsed = time.process_time() - started
            assert response.status_code == 200
            return elapsed

        async def render_batch(locale: str, count: int) -> float:
            headers = clients[locale][1]
            async with app.test_request_context(PAGE, headers=headers):
                g.session = Session()
                cls = web_context.keystage().stage_types["identification"]
                challenge = challenges[locale]
                started = time.process_time()
                for _ in range(count):
                    # What flow_views._render does per request, minus the executor.
                    g.pop("locale", None)
                    g.pop("translations", None)
                    context = {**web_context.template_globals(), "challenge": challenge,
                               "flow": challenge.get("flow", {}), "errors": {}, "messages": [],
                               "csrf_token": "x" * 43, "action": PAGE,
                               "stage_template": f"stages/identification/{cls.template}"}
                    body = await render_template("flow.html", **context)
                elapsed = time.process_time() - started
                assert f'lang="{locale.replace("_", "-")}"' in body
            return elapsed

        async def part(batch: Any, order: list[str]) -> dict[str, float]:
            """CPU µs per request of each locale, the locales taking turns in small chunks so
            that they share the same moment's noise."""
            spent = dict.fromkeys(order, 0.0)
            chunk = max(1, args.requests // args.chunks)
            for _ in range(args.chunks):
                for locale in order:
                    spent[locale] += await batch(locale, chunk)
            return {locale: total / (chunk * args.chunks) * 1e6 for locale, total in spent.items()}

        raw: dict[str, Any] = {"page": {loc: [] for loc in locales}, "render": {loc: [] for loc in locales},
                               "calibration_s": []}
        # Warm-up: template compilation, first-use caches.
        for locale in locales:
            await page_batch(locale, 50)
            await render_batch(locale, 50)
        loads_before = loads["count"]
        for round_number in range(args.rounds):
            order = locales[round_number % len(locales):] + locales[:round_number % len(locales)]
            raw["calibration_s"].append(calibrate())
            for name, batch in (("page", page_batch), ("render", render_batch)):
                for locale, value in (await part(batch, order)).items():
                    raw[name][locale].append(value)
            print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
                f"{loc} page {raw['page'][loc][-1]:.0f} render {raw['render'][loc][-1]:.0f} µs" for loc in order),
                file=sys.stderr)
        raw["catalog_loads_at_startup"] = loads_at_startup
        raw["catalog_loads_during_measurement"] = loads["count"] - loads_before
    i18n._compile = compile_po  # noqa: SLF001
    return raw


def report(args: argparse.Namespace, raw: dict[str, Any], load_before: tuple[float, ...]) -> dict[str, Any]:
    locales = ["en", *args.locales]
    out: dict[str, Any] = {
        "benchmark": "bench/i18n.py",
        "target": f"translated / English <= {TARGET} (CPU per request)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "parameters": {"rounds": args.rounds, "requests_per_round": args.requests, "chunks": args.chunks,
                       "locales": locales},
        "catalog_loads_at_startup": raw["catalog_loads_at_startup"],
        "catalog_loads_during_measurement": raw["catalog_loads_during_measurement"],
        "calibration_s": summary(raw["calibration_s"]),
        "noise_calibration_spread_pct": 100 * (max(raw["calibration_s"]) - min(raw["calibration_s"]))
        / statistics.median(raw["calibration_s"]),
    }
    for part in ("page", "render"):
        section: dict[str, Any] = {}
        english = raw[part]["en"]
        for locale in locales:
            values = raw[part][locale]
            entry: dict[str, Any] = {"cpu_us": summary(values)}
            if locale != "en":
                ratios = [v / e for v, e in zip(values, english, strict=True)]
                entry["ratio_to_en"] = summary(ratios)
                entry["meets_target"] = statistics.median(ratios) <= TARGET
            section[locale] = entry
        out[part] = section
    return out


def print_report(out: dict[str, Any]) -> str:
    lines = []
    m = out["machine"]
    lines.append(f"machine: {m['cpus']} CPUs, Python {m['python']}, load {m['loadavg_before'][0]:.1f} before, "
                 f"{m['loadavg_after'][0]:.1f} after; calibration spread {out['noise_calibration_spread_pct']:.0f} %")
    p = out["parameters"]
    lines.append(f"{p['rounds']} rounds x {p['requests_per_round']} requests per locale and part, "
                 f"the locales taking turns in {p['chunks']} chunks per round")
    lines.append(f"catalog loads: {out['catalog_loads_at_startup']} at app creation, "
                 f"{out['catalog_loads_during_measurement']} during the measured requests")
    for part, title in (("page", "page: GET the identification page (in-process ASGI, PostgreSQL)"),
                        ("render", "render: flow.html of the identification challenge only")):
        lines.append("")
        lines.append(title)
        lines.append(f"  {'locale':<7} {'CPU µs/request':>24}  {'ratio to en':>22}")
        for locale, entry in out[part].items():
            ratio = fmt(entry["ratio_to_en"], 3) if "ratio_to_en" in entry else "-"
            mark = "" if "meets_target" not in entry else ("  ok" if entry["meets_target"] else "  OVER TARGET")
            lines.append(f"  {locale:<7} {fmt(entry['cpu_us'], 0):>24}  {ratio:>22}{mark}")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=400, help="requests per locale, part and round")
    parser.add_argument("--chunks", type=int, default=8, help="turns the locales take within a round")
    parser.add_argument("--locales", default="de,ar,ja,en_XA", help="translated locales compared with en")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "i18n.json")
    args = parser.parse_args()
    args.locales = [loc for loc in args.locales.split(",") if loc and loc != "en"]
    server = os.environ.get("KEYSTAGE_DATABASE_URL") or DEFAULT_SERVER
    name = f"keystage_bench_i18n_{secrets.token_hex(4)}"
    database_url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    data_dir = Path(tempfile.mkdtemp(prefix="keystage-bench-i18n-"))
    load_before = os.getloadavg()
    asyncio.run(admin(server, f'CREATE DATABASE "{name}"'))
    try:
        raw = asyncio.run(measure(args, database_url, data_dir))
    finally:
        asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(data_dir, ignore_errors=True)
    out = report(args, raw, load_before)
    text = print_report(out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    args.json.with_suffix(".txt").write_text(text + "\n")
    ok = all(e.get("meets_target", True) for part in ("page", "render") for e in out[part].values())
    return 0 if ok and out["catalog_loads_during_measurement"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
