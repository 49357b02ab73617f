"""Kernel behaviour in process: plugins, migrations, HTTP plumbing, passwords, request data."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keystage.engine import migrations
from keystage.engine.app import create_app
from keystage.engine.errors import PluginError
from keystage.engine.hookspecs import hookimpl
from keystage.engine.plugins import BUNDLED_PLUGINS
from keystage.engine.request_info import client_ip, trusted_networks
from keystage.engine.runtime import Keystage

ROOT = Path(__file__).resolve().parent.parent


def test_bundled_tuple_covers_every_plugin_package() -> None:
    found = set()
    for top in ("stages", "plugins"):
        for init in (ROOT / top).rglob("__init__.py"):
            package = init.parent
            if package == ROOT / top:
                continue
            modules = [p for p in package.glob("*.py") if p.name != "__init__.py"]
            dotted = "keystage." + ".".join(package.relative_to(ROOT).parts)
            if "@hookimpl" in init.read_text(encoding="utf-8"):
                found.add(dotted)  # the package is the plugin (stages/password/, plugins/providers/oidc/)
            elif modules:
                found.update(f"{dotted}.{m.stem}" for m in modules)  # each module is one (plugins/policies/)
            # else: a folder of plugin packages (plugins/providers/)
    assert found == set(BUNDLED_PLUGINS)


def test_misspelled_hook_is_refused(keystage_settings: Any) -> None:
    class Typo:
        @hookimpl
        def register_stage_type(self) -> list[Any]:  # sic: the real hook is register_stage_types
            return []

    with pytest.raises(PluginError, match="typo-plugin.*register_stage_type"):
        Keystage(keystage_settings, extra_plugins=[("typo-plugin", Typo())])


def test_a_raising_hook_does_not_take_others_down(keystage_settings: Any, caplog: Any) -> None:
    class Broken:
        @hookimpl
        def register_stage_types(self) -> list[Any]:
            raise RuntimeError("boom")

    class WrongType:
        @hookimpl
        def register_stage_types(self) -> Any:
            return ["not a class"]

    kernel = Keystage(keystage_settings, extra_plugins=[("broken", Broken()), ("wrong", WrongType())])
    assert "identification" in kernel.stage_types
    assert "plugin broken: hook register_stage_types raised" in caplog.text
    assert "plugin wrong: register_stage_types returned" in caplog.text


def test_duplicate_stage_type_names_both_plugins(keystage_settings: Any) -> None:
    from keystage.engine.stage import Stage

    class Again(Stage):
        type_name = "password"

    class Plugin:
        @hookimpl
        def register_stage_types(self) -> list[Any]:
            return [Again]

    with pytest.raises(PluginError, match="'password' is registered by both stages.password and dup"):
        Keystage(keystage_settings, extra_plugins=[("dup", Plugin())])


async def test_concurrent_migrations_do_not_collide(keystage_server_url: str) -> None:
    from keystage.engine.testing import with_database

    name = "keystage_mig_race"
    admin = await asyncpg.connect(keystage_server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(keystage_server_url, name)
        conns = [await asyncpg.connect(url) for _ in range(4)]
        results = await asyncio.gather(*[migrations.apply(c, []) for c in conns])
        applied = [len(r) for r in results]
        total = len(list((ROOT / "engine" / "sql").glob("*.sql")))
        assert sorted(applied) == [0, 0, 0, total]
        rows = await conns[0].fetch("SELECT owner, number FROM keystage_migrations ORDER BY number")
        assert [(r["owner"], r["number"]) for r in rows] == [("keystage", n) for n in sorted(
            int(p.name[:4]) for p in (ROOT / "engine" / "sql").glob("*.sql"))]
        for conn in conns:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_badly_named_migration_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "1_oops.sql").write_text("SELECT 1;")
    with pytest.raises(Exception, match="not named NNNN_description.sql"):
        migrations.read_directory("someplugin", tmp_path)


async def test_health_live_ready_and_metrics(keystage_client: Any) -> None:
    assert (await keystage_client.get("/-/health/live/")).status_code == 200
    ready = await keystage_client.get("/-/health/ready/")
    assert ready.status_code == 200 and (await ready.get_json())["status"] == "ok"
    metrics = await (await keystage_client.get("/-/metrics")).get_data(as_text=True)
    assert 'keystage_http_requests_total{method="GET",status="200"}' in metrics


async def test_ready_is_503_naming_redis_when_it_is_down(keystage_settings: Any) -> None:
    settings = dataclasses.replace(keystage_settings, redis_url="redis://127.0.0.1:1/0")
    app = create_app(settings)
    kernel = app.extensions["keystage"]
    await kernel.open()  # PostgreSQL is fine; the Redis client connects lazily and fails on use
    client = app.test_client()
    response = await client.get("/-/health/ready/")
    body = await response.get_json()
    assert response.status_code == 503
    assert "redis" in body["down"] and "postgresql" not in body["down"]
    await kernel.close()


async def test_ready_is_503_when_postgres_is_gone(keystage_app: Any) -> None:
    kernel = keystage_app.extensions["keystage"]
    await kernel.pool.close()
    response = await keystage_app.test_client().get("/-/health/ready/")
    assert response.status_code == 503
    assert "postgresql" in (await response.get_json())["down"]


async def test_security_headers_and_request_id(keystage_client: Any) -> None:
    response = await keystage_client.get("/-/health/live/")
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert len(headers["X-Request-Id"]) == 32
    forged = await keystage_client.get("/-/health/live/", headers={"X-Request-Id": 'x" injected'})
    assert forged.headers["X-Request-Id"] != 'x" injected'


async def test_a_crash_never_shows_a_traceback(keystage_app: Any) -> None:
    @keystage_app.get("/-/test-crash")
    async def crash() -> str:
        raise ZeroDivisionError("secret internals")

    response = await keystage_app.test_client().get("/-/test-crash")
    text = await response.get_data(as_text=True)
    assert response.status_code == 500
    assert "Traceback" not in text and "secret internals" not in text and "request_id" in text


async def test_password_hash_is_upgraded_when_parameters_change(keystage: Any, keystage_settings: Any) -> None:
    user = await keystage.users.create("carol", password="a good password")
    old_hash = user.password_hash
    assert "m=19456" in old_hash
    stronger = dataclasses.replace(keystage_settings, argon2_memory_cost=32768)
    kernel = Keystage(stronger)
    await kernel.open()
    try:
        assert await kernel.users.check_password(await kernel.users.get(user.id), "a good password")
        new_hash = (await kernel.users.get(user.id)).password_hash
        assert new_hash != old_hash and "m=32768" in new_hash
        assert not await kernel.users.check_password(await kernel.users.get(user.id), "wrong")
    finally:
        await kernel.close()


async def test_user_validation_and_case_insensitive_uniqueness(keystage: Any) -> None:
    from keystage.engine.users import UserError

    await keystage.users.create("Dave", email="dave@example.com")
    with pytest.raises(UserError, match="username: already taken"):
        await keystage.users.create("dave")
    with pytest.raises(UserError, match="email: already taken"):
        await keystage.users.create("dave2", email="DAVE@example.com")
    for bad in ("", "   ", "has space", "x" * 151):
        with pytest.raises(UserError, match="username"):
            await keystage.users.create(bad)
    with pytest.raises(UserError, match="email"):
        await keystage.users.create("erin", email="not-an-email")


async def test_nested_group_membership(keystage: Any) -> None:
    staff = await keystage.users.create_group("staff")
    admins = await keystage.users.create_group("admins", parent_id=staff.id)
    user = await keystage.users.create("frank")
    await keystage.users.add_member(admins.id, user.id)
    assert await keystage.users.group_ids(user.id) == {staff.id, admins.id}
    await keystage.users.remove_member(admins.id, user.id)
    assert await keystage.users.group_ids(user.id) == set()


@pytest.mark.parametrize(("peer", "header", "proxies", "expected"), [
    ("203.0.113.5", "198.51.100.1", [], "203.0.113.5"),                 # no trusted proxy: header ignored
    ("10.0.0.2", "198.51.100.1", ["10.0.0.0/8"], "198.51.100.1"),
    ("10.0.0.2", "6.6.6.6, 198.51.100.1", ["10.0.0.0/8"], "198.51.100.1"),  # spoofed left part ignored
    ("10.0.0.2", "198.51.100.1, 10.0.0.9", ["10.0.0.0/8"], "198.51.100.1"),
    ("203.0.113.5", "198.51.100.1", ["10.0.0.0/8"], "203.0.113.5"),     # untrusted peer
    ("10.0.0.2", "garbage", ["10.0.0.0/8"], "0.0.0.0"),
])
def test_client_ip_honours_only_trusted_proxies(peer: str, header: str, proxies: list[str], expected: str,
                                                tmp_path: Path) -> None:
    from keystage.engine.config import load_settings

    settings = load_settings({"KEYSTAGE_DATA_DIR": str(tmp_path), "KEYSTAGE_TRUSTED_PROXIES": ",".join(proxies)})
    assert client_ip(peer, header, trusted_networks(settings)) == expected
