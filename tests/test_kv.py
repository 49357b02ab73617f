"""The key-value store, against the real PostgreSQL and the real Redis: same contract for both."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator

import pytest

from keystage.engine import kv
from keystage.engine.config import Settings
from keystage.engine.runtime import Keystage
from keystage.engine.testing import opened_kernel


@pytest.fixture
async def kernel(keystage_backend_settings: Settings) -> AsyncIterator[Keystage]:
    async with opened_kernel(keystage_backend_settings) as runtime:
        yield runtime


@pytest.fixture
def ns() -> str:
    """A key namespace of its own: the Redis test database is shared with concurrent test runs."""
    return f"test-{secrets.token_hex(6)}:"


async def test_create_store_picks_the_backend(kernel: Keystage) -> None:
    expected = kv.RedisStore if kernel.settings.redis_url else kv.PostgresStore
    assert isinstance(kernel.kv, expected)
    assert isinstance(kernel.kv, kv.KeyValueStore)


async def test_set_get_delete(kernel: Keystage, ns: str) -> None:
    store = kernel.kv
    assert await store.get(ns + "a") is None
    await store.set(ns + "a", b"\x00binary\xff", ttl=30)
    assert await store.get(ns + "a") == b"\x00binary\xff"
    await store.set(ns + "a", b"second", ttl=30)
    assert await store.get(ns + "a") == b"second"
    await store.delete(ns + "a")
    assert await store.get(ns + "a") is None
    await store.delete(ns + "never-there")  # not an error


async def test_ttl_expiry(kernel: Keystage, ns: str) -> None:
    await kernel.kv.set(ns + "short", b"1", ttl=1)
    await kernel.kv.set(ns + "long", b"2", ttl=30)
    assert await kernel.kv.get(ns + "short") == b"1"
    await asyncio.sleep(1.2)
    assert await kernel.kv.get(ns + "short") is None
    assert await kernel.kv.get(ns + "long") == b"2"
    await kernel.kv.delete(ns + "long")


async def test_set_replaces_the_expiry(kernel: Keystage, ns: str) -> None:
    await kernel.kv.set(ns + "k", b"old", ttl=1)
    await kernel.kv.set(ns + "k", b"new", ttl=30)
    await asyncio.sleep(1.2)
    assert await kernel.kv.get(ns + "k") == b"new"
    await kernel.kv.delete(ns + "k")


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
async def test_ttl_must_be_positive(kernel: Keystage, ns: str, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await kernel.kv.set(ns + "k", b"v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await kernel.kv.incr(ns + "c", ttl=ttl)
    assert await kernel.kv.get(ns + "k") is None


async def test_incr_counts_and_stores_decimal_digits(kernel: Keystage, ns: str) -> None:
    assert await kernel.kv.incr(ns + "c", ttl=30) == 1
    assert await kernel.kv.incr(ns + "c", 5, ttl=30) == 6
    assert await kernel.kv.incr(ns + "c", -10, ttl=30) == -4
    assert await kernel.kv.get(ns + "c") == b"-4"
    await kernel.kv.set(ns + "d", b"41", ttl=30)
    assert await kernel.kv.incr(ns + "d", ttl=30) == 42
    await kernel.kv.delete(ns + "c")
    await kernel.kv.delete(ns + "d")


async def test_incr_is_atomic_under_concurrency(kernel: Keystage, ns: str) -> None:
    results = await asyncio.gather(*(kernel.kv.incr(ns + "c", ttl=30) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await kernel.kv.get(ns + "c") == b"50"
    await kernel.kv.delete(ns + "c")


async def test_incr_keeps_the_expiry_of_the_first_increment(kernel: Keystage, ns: str) -> None:
    assert await kernel.kv.incr(ns + "c", ttl=1) == 1
    await asyncio.sleep(0.6)
    assert await kernel.kv.incr(ns + "c", ttl=60) == 2  # a fixed window: not extended
    await asyncio.sleep(0.7)
    assert await kernel.kv.get(ns + "c") is None
    assert await kernel.kv.incr(ns + "c", ttl=30) == 1
    await kernel.kv.delete(ns + "c")


async def test_incr_restarts_an_expired_value(kernel: Keystage, ns: str) -> None:
    await kernel.kv.set(ns + "c", b"41", ttl=1)
    await asyncio.sleep(1.2)  # in PostgreSQL the row is still there, unpurged
    assert await kernel.kv.incr(ns + "c", ttl=30) == 1
    await kernel.kv.delete(ns + "c")


async def test_incr_of_a_non_number_is_a_value_error(kernel: Keystage, ns: str) -> None:
    await kernel.kv.set(ns + "text", b"hello", ttl=30)
    with pytest.raises(ValueError):
        await kernel.kv.incr(ns + "text", ttl=30)
    assert await kernel.kv.get(ns + "text") == b"hello"
    await kernel.kv.delete(ns + "text")


async def test_purge_expired(kernel: Keystage, ns: str) -> None:
    for name in ("x", "y", "z"):
        await kernel.kv.set(ns + name, b"v", ttl=1)
    await kernel.kv.set(ns + "keep", b"v", ttl=30)
    await asyncio.sleep(1.2)
    purged = await kernel.kv.purge_expired()
    if isinstance(kernel.kv, kv.RedisStore):
        assert purged == 0  # Redis expires keys itself
        assert await kernel.redis.exists(*(f"keystage:{ns}{n}" for n in "xyz")) == 0
    else:
        assert purged == 3
        keys = [r["key"] for r in await kernel.pool.fetch("SELECT key FROM kv ORDER BY key")]
        assert keys == [ns + "keep"]
        assert await kernel.kv.purge_expired() == 0
    assert await kernel.kv.get(ns + "keep") == b"v"
    await kernel.kv.delete(ns + "keep")


async def test_postgres_purge_in_batches(keystage: Keystage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "PURGE_BATCH", 2)
    for i in range(5):
        await keystage.kv.set(f"b{i}", b"v", ttl=0.05)
    await asyncio.sleep(0.2)
    assert await keystage.kv.purge_expired() == 5
    assert await keystage.pool.fetchval("SELECT count(*) FROM kv") == 0


async def test_redis_keys_are_prefixed(redis_url: str, keystage_settings: Settings, ns: str) -> None:
    runtime = Keystage(dataclasses.replace(keystage_settings, redis_url=redis_url))
    await runtime.open()
    try:
        await runtime.kv.set(ns + "k", b"v", ttl=30)
        assert await runtime.redis.get(f"keystage:{ns}k") == b"v"
        assert await runtime.redis.exists(ns + "k") == 0
        assert 0 < await runtime.redis.pttl(f"keystage:{ns}k") <= 30_000
        await runtime.kv.delete(ns + "k")
        assert await runtime.redis.exists(f"keystage:{ns}k") == 0
    finally:
        await runtime.close()


async def test_postgres_rows_carry_the_expiry(keystage: Keystage) -> None:
    await keystage.kv.set("k", b"v", ttl=100)
    seconds = await keystage.pool.fetchval("SELECT extract(epoch FROM expires_at - now()) FROM kv WHERE key = 'k'")
    assert 95 < seconds <= 100


async def test_runtime_store_lifecycle(keystage_settings: Settings) -> None:
    runtime = Keystage(keystage_settings)
    with pytest.raises(RuntimeError, match="not open"):
        await runtime.kv.get("k")
    await runtime.open()
    task = runtime._kv_purge
    assert task is not None and not task.done()  # PostgreSQL needs the background purge
    await runtime.close()
    assert task.cancelled()
    with pytest.raises(RuntimeError, match="not open"):
        await runtime.kv.set("k", b"v", ttl=1)


async def test_purge_loop_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    class Flaky:
        async def purge_expired(self) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("database away")
            return 1

    task = asyncio.create_task(kv.purge_periodically(Flaky(), interval=0.01))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if calls >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert calls >= 3
    assert "purging expired keys failed" in caplog.text
