"""Change announcements (engine/changes.py) against the real PostgreSQL: a change to a configuration
table makes what was read before it stale in every listening process; a lost listener makes
nothing fresh until it is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from keystage.engine import changes as changes_module
from keystage.engine.config import Settings
from keystage.engine.runtime import Keystage
from keystage.engine.testing import opened_kernel


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def kernel(keystage_settings: Settings) -> AsyncIterator[Keystage]:
    async with opened_kernel(keystage_settings) as runtime:
        yield runtime


async def test_nothing_is_fresh_before_listening(kernel: Keystage) -> None:
    assert not kernel.changes.live and kernel.changes.mark() is None
    assert not kernel.changes.fresh(None) and not kernel.changes.fresh(0)


@pytest.mark.parametrize("statement", [
    "UPDATE providers SET config = config || '{}'",
    "INSERT INTO providers (name, type, config) VALUES ('extra', 'oidc', '{}')",
    "DELETE FROM providers",
    "UPDATE flows SET title = title",
    "DELETE FROM policy_bindings",
])
async def test_a_committed_change_makes_earlier_reads_stale(kernel: Keystage, statement: str) -> None:
    kernel.listen_for_changes()
    await until(lambda: kernel.changes.live)
    mark = kernel.changes.mark()
    assert kernel.changes.fresh(mark)
    async with kernel.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(statement)
            await asyncio.sleep(0.2)
            assert kernel.changes.fresh(mark)  # not committed: nothing announced yet
    await until(lambda: not kernel.changes.fresh(mark))
    assert kernel.changes.fresh(kernel.changes.mark())


async def test_other_tables_announce_nothing(kernel: Keystage) -> None:
    kernel.listen_for_changes()
    await until(lambda: kernel.changes.live)
    mark = kernel.changes.mark()
    await kernel.pool.execute("UPDATE users SET last_login_at = now()")
    await kernel.kv.set("changes-test", b"x", ttl=5)
    await asyncio.sleep(0.3)
    assert kernel.changes.fresh(mark)


async def test_a_lost_listener_makes_nothing_fresh_until_it_is_back(kernel: Keystage,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changes_module, "PING_EVERY", 0.1)
    kernel.listen_for_changes()
    await until(lambda: kernel.changes.live)
    mark = kernel.changes.mark()
    await kernel.pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'keystage-changes'"
        " AND datname = current_database()")
    await until(lambda: not kernel.changes.live)
    assert not kernel.changes.fresh(mark) and kernel.changes.mark() is None
    await until(lambda: kernel.changes.live)  # connected again
    assert not kernel.changes.fresh(mark)  # a change made while it was away would not have been heard
    assert kernel.changes.fresh(kernel.changes.mark())


async def test_a_listener_that_stops_answering_is_not_trusted(kernel: Keystage,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    kernel.listen_for_changes()
    await until(lambda: kernel.changes.live)
    mark = kernel.changes.mark()
    # A connection that hangs without closing: no ping has been answered for longer than the limit.
    monkeypatch.setattr(kernel.changes, "_last_answer", time.monotonic() - changes_module.PING_LIMIT - 1)
    assert not kernel.changes.live and not kernel.changes.fresh(mark)


async def test_close_stops_listening(kernel: Keystage) -> None:
    kernel.listen_for_changes()
    await until(lambda: kernel.changes.live)
    await kernel.changes.close()
    assert not kernel.changes.live
    deadline = time.monotonic() + 10
    while await kernel.pool.fetchval(  # the server notices the closed connection a moment later
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'keystage-changes'"
            " AND datname = current_database()"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
