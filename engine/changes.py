"""Change announcements: PostgreSQL tells each keystage process when a configuration table changes.

A statement that changes ``providers``, ``applications``, ``flows``, ``stages``, their bindings or
``policies`` sends a NOTIFY on ``keystage_changes`` (migration 0008); NOTIFY is delivered at commit.
Each serving process listens on a connection of its own. What a process keeps from those tables
may be used without reading it again only while it is *fresh*::

    mark = keystage.changes.mark()      # before reading
    row = await keystage.pool.fetchrow(...)
    ...
    if keystage.changes.fresh(mark):    # later: nothing announced since, and still listening
        use what was read

A value read before a change is then used for at most the time the announcement takes to arrive
(milliseconds). Nothing is fresh while the listener is not connected, or when it has not answered
a ping for ``PING_LIMIT`` seconds (a connection that hangs without closing): callers then read
the database as if nothing were kept. Plugins may announce changes to tables of their own with
``EXECUTE FUNCTION keystage_announce_change()`` in a statement-level trigger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg

log = logging.getLogger("keystage.changes")

CHANNEL = "keystage_changes"
PING_EVERY = 5.0
PING_LIMIT = 15.0
RETRY_MAX = 30.0


class Changes:
    """One process's view of the announcements. Until ``start`` (CLI commands, tests of the kernel
    alone) nothing is ever fresh."""

    def __init__(self) -> None:
        self._generation = 0
        self._conn: asyncpg.Connection | None = None
        self._last_answer = float("-inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """Listening now, on a connection that answered within ``PING_LIMIT`` seconds."""
        conn = self._conn
        return conn is not None and not conn.is_closed() and time.monotonic() - self._last_answer < PING_LIMIT

    def mark(self) -> int | None:
        """Take before reading something to keep; None when nothing read now could be fresh."""
        return self._generation if self.live else None

    def fresh(self, mark: int | None) -> bool:
        """Whether what was read after ``mark`` was taken is still what the database holds (as far as
        announcements tell: see the module's docstring)."""
        return mark is not None and mark == self._generation and self.live

    def changed(self, *_: Any) -> None:
        """Forget everything: what was read before now is no longer fresh. (The listener's callback.)"""
        self._generation += 1

    def start(self, url: str) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(url), name="keystage-changes")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self, url: str) -> None:
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(url, server_settings={"application_name": "keystage-changes"})
                await conn.add_listener(CHANNEL, self.changed)
                self.changed()  # what was read while nobody listened is not fresh
                self._conn, self._last_answer, delay = conn, time.monotonic(), 0.5
                while True:
                    await asyncio.sleep(PING_EVERY)
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_LIMIT)
                    self._last_answer = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: stop trusting, then connect again
                log.warning("not listening for configuration changes (%s); retrying in %.1f s", exc, delay)
            finally:
                self._conn = None
                self.changed()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
