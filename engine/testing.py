"""The keystage test kit, a pytest plugin (entry point ``pytest11``): real PostgreSQL, real Redis.

Fixtures:

* ``keystage_server_url`` (session) — a PostgreSQL server: ``KEYSTAGE_TEST_DATABASE_URL`` when
  set, else an embedded server in a temporary directory for the session.
* ``keystage_database_url`` — a fresh database for one test, cloned from a template that
  was migrated once per session (kernel and bundled plugins), dropped afterwards.
* ``keystage_settings`` — ``Settings`` for that database and a temporary data directory.
* ``keystage`` — an opened ``Keystage`` runtime (pool, plugins, services).
* ``keystage_app`` / ``keystage_client`` — the Quart app with its serving lifecycle run, and
  a test client with a cookie jar.
* ``redis_url`` — ``KEYSTAGE_TEST_REDIS_URL`` or redis://127.0.0.1:6379/15 when reachable; the
  test is skipped otherwise, unless ``KEYSTAGE_TEST_REQUIRE_ALL=1`` (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from .config import Settings, load_settings
from .runtime import Keystage

REQUIRE_ALL_ENV = "KEYSTAGE_TEST_REQUIRE_ALL"


def require_all() -> bool:
    """True in CI: what would be skipped for a missing service or browser must fail instead."""
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    if require_all():
        pytest.fail(f"{reason} (and {REQUIRE_ALL_ENV} is set, so this may not be skipped)")
    pytest.skip(reason)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    if parts.hostname is None and "host=" in parts.query:
        return urlunsplit(parts._replace(path=f"/{database}"))
    return urlunsplit(parts._replace(path=f"/{database}"))


def base_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: a given database, a private data directory, nothing from the environment."""
    # Default blueprints are left out so that each test states the flows it relies on
    # (`await keystage.engine.blueprints.apply_defaults(kernel)` brings them in).
    env = {"KEYSTAGE_DATABASE_URL": database_url, "KEYSTAGE_DATA_DIR": str(data_dir),
           "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "false"}
    settings = load_settings(env)
    return dataclasses.replace(settings, **overrides) if overrides else settings


@pytest.fixture(scope="session")
def keystage_server_url() -> Iterator[str]:
    url = os.environ.get("KEYSTAGE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from .embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="keystage-test-pg-") as directory:
        os.chmod(directory, 0o755)
        server = EmbeddedPostgres(Path(directory))
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def keystage_template_database(keystage_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated once for the session; each test clones it (fast) instead of migrating."""
    name = f"keystage_tpl_{os.getpid()}_{secrets.token_hex(3)}"

    async def build() -> None:
        conn = await asyncpg.connect(keystage_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        settings = base_settings(with_database(keystage_server_url, name), tmp_path_factory.mktemp("tpl"))
        kernel = Keystage(settings)
        await kernel.open(migrate=True)
        await kernel.close()

    asyncio.run(build())
    return name


@pytest.fixture
def keystage_database_url(keystage_server_url: str, keystage_template_database: str) -> Iterator[str]:
    name = f"keystage_t_{secrets.token_hex(6)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(keystage_server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}" TEMPLATE "{keystage_template_database}"'))
    try:
        yield with_database(keystage_server_url, name)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def keystage_settings(keystage_database_url: str, tmp_path: Path) -> Settings:
    return base_settings(keystage_database_url, tmp_path / "data")


@pytest_asyncio.fixture
async def keystage(keystage_settings: Settings) -> AsyncIterator[Keystage]:
    kernel = Keystage(keystage_settings)
    await kernel.open()
    try:
        yield kernel
    finally:
        await kernel.close()


@pytest_asyncio.fixture
async def keystage_app(keystage_settings: Settings) -> AsyncIterator[Any]:
    from .app import create_app

    app = create_app(keystage_settings)
    async with app.test_app():
        yield app


@pytest.fixture
def keystage_client(keystage_app: Any) -> Any:
    return keystage_app.test_client()


@contextlib.contextmanager
def registered_plugin(keystage: Keystage, plugin: object, name: str = "test-plugin") -> Iterator[object]:
    """Register ``plugin`` on a running kernel for the duration of a ``with`` block."""
    keystage.plugins.register(name, plugin)
    try:
        yield plugin
    finally:
        keystage.plugins.unregister(name)


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("KEYSTAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if not _reachable(url):
        skip_or_fail(f"no Redis reachable at {url} (set KEYSTAGE_TEST_REDIS_URL)")
    return url


async def make_flow(
    keystage: Keystage, slug: str, stages: list[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]],
    *, designation: str = "authentication", title: str = "", **flow_attrs: Any,
) -> int:
    """Create a flow bound to new stages, in order: ``[(type, config[, binding attrs]), ...]``. Returns the flow id."""
    import json

    async with keystage.pool.acquire() as conn, conn.transaction():
        flow_id = await conn.fetchval(
            "INSERT INTO flows (slug, name, title, designation, policy_engine_mode, denied_action)"
            " VALUES ($1, $1, $2, $3, $4, $5) RETURNING id",
            slug, title or slug, designation, flow_attrs.get("policy_engine_mode", "any"),
            flow_attrs.get("denied_action", "message"),
        )
        for index, item in enumerate(stages):
            stage_type, config = item[0], item[1]
            binding = item[2] if len(item) > 2 else {}  # type: ignore[misc]
            stage_id = await conn.fetchval(
                "INSERT INTO stages (name, type, config) VALUES ($1, $2, $3::jsonb) RETURNING id",
                f"{slug}-{index}-{stage_type}", stage_type, json.dumps(config),
            )
            await conn.execute(
                """INSERT INTO flow_stage_bindings (flow_id, stage_id, "order", evaluate_on_plan,
                       re_evaluate_policies, invalid_response_action) VALUES ($1, $2, $3, $4, $5, $6)""",
                flow_id, stage_id, binding.get("order", (index + 1) * 10), binding.get("evaluate_on_plan", True),
                binding.get("re_evaluate_policies", False), binding.get("invalid_response_action", "retry"),
            )
    return int(flow_id)


class FlowDriver:
    """Walks a flow through the JSON face: ``await flow.start(slug)``, ``await flow.submit(...)``, ``flow.challenge``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.slug: str | None = None
        self.challenge: dict[str, Any] = {}
        self.status = 0

    async def start(self, slug: str, **query: str) -> dict[str, Any]:
        self.slug = slug
        from urllib.parse import urlencode

        suffix = f"?{urlencode(query)}" if query else ""
        response = await self.client.get(f"/api/v1/flows/{slug}/executor{suffix}")
        self.status = response.status_code
        self.challenge = await response.get_json()
        return self.challenge

    async def submit(self, component: str | None = None, **fields: Any) -> dict[str, Any]:
        assert self.slug is not None, "call start() first"
        body = {"component": component or self.challenge.get("component"), **fields}
        response = await self.client.post(f"/api/v1/flows/{self.slug}/executor", json=body)
        self.status = response.status_code
        self.challenge = await response.get_json()
        return self.challenge


@pytest.fixture
def flow(keystage_client: Any) -> FlowDriver:
    return FlowDriver(keystage_client)
