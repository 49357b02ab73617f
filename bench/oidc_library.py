"""Library page (GET /) with N applications, each bound to its own expression policy: server time per request.

In-process (the app's test client, no HTTP server): what the request costs keystage, p50/p90 over R requests.
Needs the PostgreSQL server of KEYSTAGE_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres).

    python bench/oidc_library.py --apps 1000 --requests 40 [--cold]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from keystage.engine.app import create_app
from keystage.engine.blueprints import apply_defaults
from keystage.engine.http_server import freeze_after_startup
from keystage.engine.runtime import Keystage
from keystage.engine.testing import FlowDriver, base_settings, with_database

SERVER = os.environ.get("KEYSTAGE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def main(apps: int, requests: int, cold: bool) -> None:
    name = f"keystage_libbench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(SERVER)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(SERVER, name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = base_settings(url, Path(tmp))
            app = create_app(settings, keystage=Keystage(settings))
            freeze_after_startup(app)  # as `keystage serve` does
            async with app.test_app():
                kernel = app.extensions["keystage"]
                await apply_defaults(kernel)
                user = await kernel.users.create("alice", password="bench-password-alice", email="a@example.org")
                for g in range(10):
                    group = await kernel.users.create_group(f"g{g}")
                    if g % 2 == 0:
                        await kernel.users.add_member(group.id, user.id)
                async with kernel.pool.acquire() as conn, conn.transaction():
                    for i in range(apps):
                        app_id = await conn.fetchval(
                            "INSERT INTO applications (slug, name, \"group\", launch_url) VALUES ($1, $2, $3, $4) RETURNING id",
                            f"app{i}", f"Application {i}", f"Group {i % 20}", f"https://app{i}.example.org/")
                        policy_id = await conn.fetchval(
                            "INSERT INTO policies (name, type, config) VALUES ($1, 'expression', $2::jsonb) RETURNING id",
                            f"p{i}", '{"expression": "return is_group_member(request.user, \\"g%d\\")"}' % (i % 10))
                        await conn.execute("INSERT INTO policy_bindings (application_id, policy_id) VALUES ($1, $2)",
                                           app_id, policy_id)
                client = app.test_client()
                flow = FlowDriver(client)
                await flow.start("default-authentication-flow")
                await flow.submit(uid_field="alice")
                await flow.submit(password="bench-password-alice")
                if flow.component == "user_login":
                    await flow.submit(remember_me=False)
                for _ in range(3):  # warm: sandbox workers, compiled expressions
                    page = await (await client.get("/")).get_data(as_text=True)
                shown = page.count("https://app")
                times, cpu = [], []
                for _ in range(requests):
                    if cold:  # every policy evaluated again (no cached results)
                        kernel.state.pop("policy_cache", None)
                    t, c = time.perf_counter(), time.process_time()
                    response = await client.get("/")
                    await response.get_data()
                    times.append((time.perf_counter() - t) * 1000)
                    cpu.append((time.process_time() - c) * 1000)
                times.sort()
                print(f"{'cold' if cold else 'warm'} apps={apps} shown={shown} requests={requests} p50={statistics.median(times):.1f} ms "
                      f"p90={times[int(len(times) * 0.9)]:.1f} ms min={times[0]:.1f} ms "
                      f"server-process CPU p50={statistics.median(cpu):.1f} ms (sandbox workers not included)")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--cold", action="store_true", help="clear the policy result cache before each request")
    args = parser.parse_args()
    asyncio.run(main(args.apps, args.requests, args.cold))
