"""``Keystage``: one process's settings, plugins, database pool and services, opened and closed together.

The HTTP app, the CLI commands and the test kit all go through this object, so that a
command works the same with or without a running server.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg

from . import kv, migrations
from .changes import Changes
from .config import Settings
from .database import create_pool, database_url
from .errors import PluginError
from .passwords import PasswordHasher, Passwords
from .plugins import PluginManager
from .policy import PolicyType
from .registry import collect_types
from .stage import Stage
from .users import Users

log = logging.getLogger("keystage")


class Keystage:
    """The running kernel of one process."""

    def __init__(self, settings: Settings, *, extra_plugins: list[tuple[str, object]] | None = None) -> None:
        self.settings = settings
        self.plugins = PluginManager(settings)
        self.plugins.load(extra=extra_plugins or ())
        self._pool: asyncpg.Pool | None = None
        self.redis: Any = None  # redis.asyncio.Redis when KEYSTAGE_REDIS_URL is set
        self.kv: kv.KeyValueStore = kv.CLOSED  # the real store once open()
        self._kv_purge: asyncio.Task[None] | None = None
        self.changes = Changes()  # listening once ``listen_for_changes`` (a serving process)
        self.passwords = Passwords(self._hashers())
        self.users = Users(self)
        self.stage_types: dict[str, type[Stage]] = collect_types(self.plugins, "register_stage_types", Stage, "stage")
        self.policy_types: dict[str, type[PolicyType]] = collect_types(
            self.plugins, "register_policy_types", PolicyType, "policy"
        )
        self.state: dict[str, Any] = {}  # per-process services that plugins attach, by plugin name
        # A broken register_expression_helpers() stops startup naming the plugin, not the first evaluation.
        from .sandbox import collect_helpers

        collect_helpers(self.plugins)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the database pool is not open: call `await keystage.open()` first")
        return self._pool

    def _hashers(self) -> list[PasswordHasher]:
        hashers = [
            hasher
            for _name, hasher in self.plugins.collect(
                "register_password_hashers", lambda h: isinstance(h, PasswordHasher), "a PasswordHasher",
                settings=self.settings,
            )
        ]
        if not hashers:
            raise PluginError("no plugin registers a password hasher")
        return hashers

    def migration_sources(self) -> list[tuple[str, Path]]:
        return self.plugins.collect(
            "register_migrations", lambda p: isinstance(p, (str, Path)), "a directory path"
        )

    async def open(self, *, migrate: bool = True) -> None:
        """Open the pool (retrying for a bounded time) and apply pending migrations."""
        self._pool = await create_pool(
            database_url(self.settings),
            timeout=self.settings.database_connect_timeout,
            size=self.settings.database_pool_size,
        )
        if self.settings.redis_url:
            import redis.asyncio

            self.redis = redis.asyncio.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        if migrate:
            await self.migrate()
            if self.settings.apply_default_blueprints:
                from .blueprints import apply_defaults

                await apply_defaults(self)
        self.kv = kv.create_store(self)
        self._kv_purge = kv.start_purging(self.kv)

    def listen_for_changes(self) -> None:
        """Start following announced configuration changes (``engine/changes.py``) until ``close``."""
        self.changes.start(database_url(self.settings))

    async def migrate(self) -> list[migrations.Migration]:
        async with self.pool.acquire() as conn:
            applied = await migrations.apply(conn, [(o, Path(p)) for o, p in self.migration_sources()])
        for migration in applied:
            log.info("applied migration %s %04d_%s", migration.owner, migration.number, migration.name)
        return applied

    async def close(self) -> None:
        await self.changes.close()
        sandbox = self.state.pop("sandbox", None)
        if sandbox is not None:
            await sandbox.close()
        if self._kv_purge is not None:
            self._kv_purge.cancel()
            await asyncio.gather(self._kv_purge, return_exceptions=True)
            self._kv_purge = None
        self.kv = kv.CLOSED
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self.passwords.close()
