"""Connecting to PostgreSQL: one asyncpg pool per process, with bounded retries."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from urllib.parse import urlsplit

import asyncpg

from .config import EMBEDDED_URL_ENV, Settings, mask_url
from .errors import StartupError

log = logging.getLogger("keystage.database")

# Every keystage query is a short lookup or write by key, prepared once per connection (asyncpg's
# statement cache). PostgreSQL's default (plan_cache_mode=auto) may keep re-planning such a statement
# on every execution when it guesses a custom plan could beat the generic one; for the hot paths
# (authorization, code grant) that planning was a third of the database's CPU. Generic plans it is.
SERVER_SETTINGS = {"application_name": "keystage", "plan_cache_mode": "force_generic_plan"}


def database_url(settings: Settings) -> str:
    """The URL this process connects to: the configured one or the embedded server's."""
    if settings.database_url:
        return settings.database_url
    url = os.environ.get(EMBEDDED_URL_ENV)
    if not url:
        raise StartupError("no database: set KEYSTAGE_DATABASE_URL or start through `keystage serve`")
    return url


def describe(url: str) -> str:
    """``host:port`` (or the socket directory) and the masked URL, for error messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if not parts.hostname and "host=" in parts.query:
        host = parts.query.split("host=", 1)[1].split("&", 1)[0]
    where = f"{host}:{parts.port or 5432}" if parts.hostname else host
    return f"{where} ({mask_url(url)})"


async def create_pool(url: str, *, timeout: float, size: int = 10) -> asyncpg.Pool:
    """Open a pool, retrying with exponential backoff for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=size, timeout=min(10.0, max(timeout, 1.0)),
                command_timeout=60, server_settings=SERVER_SETTINGS,
                reset=_keep_session,
            )
            assert pool is not None
            return pool
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            remaining = deadline - time.monotonic()
            reason = _reason(exc)
            if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) or isinstance(
                exc, asyncpg.InvalidCatalogNameError
            ) or remaining <= 0:
                raise StartupError(
                    f"cannot reach PostgreSQL at {describe(url)} after {timeout:g} s: {reason}"
                ) from None
            # DEBUG: a slow database start is normal; giving up is the one line admins see.
            log.debug("PostgreSQL at %s not reachable (%s); retrying in %.1f s", describe(url), reason, delay)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset on release (``RESET ALL; UNLISTEN *; ...``): one round trip per
    query saved. keystage never leaves session state behind — no LISTEN, no SET, and the
    one session-level advisory lock (migrations) is released in a ``finally``."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text.splitlines()[0]
