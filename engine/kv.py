"""The key-value store behind sessions, flow plans, caches and counters: PostgreSQL or Redis.

Both backends keep the same contract, so nothing above this module knows which one runs:
values are bytes, every key expires (``ttl`` in seconds, required), an expired key reads as
missing, and a counter is stored as its decimal ASCII digits (what Redis ``INCRBY`` keeps).
PostgreSQL is the default because it needs no extra service; Redis (``KEYSTAGE_REDIS_URL``)
saves the database the churn and a round trip's worth of latency at scale.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import asyncpg

if TYPE_CHECKING:
    from .runtime import Keystage

log = logging.getLogger("keystage.kv")

REDIS_PREFIX = "keystage:"
# Expired rows are deleted in batches so one purge never holds many row locks or a long transaction.
PURGE_BATCH = 5000
PURGE_INTERVAL = 300.0


@runtime_checkable
class KeyValueStore(Protocol):
    """What every backend offers. All methods do one round trip to the backend."""

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None when it is missing or expired."""

    async def set(self, key: str, value: bytes, *, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (> 0), replacing any value and expiry."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        """Add ``amount`` to the counter ``key`` atomically and return the new value.

        A missing or expired key starts from 0 and expires ``ttl`` seconds later; incrementing
        an existing counter keeps its expiry (a fixed window, as rate limits want). Raises
        ``ValueError`` when the key holds something that is not a whole number.
        """

    async def purge_expired(self) -> int:
        """Delete expired keys now and return how many (Redis expires keys by itself: 0)."""


def _check_ttl(ttl: float) -> float:
    # A missing or non-positive ttl would mean "keep forever" in one backend and "gone" in the other.
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


class PostgresStore:
    """The ``kv`` table (migration 0002). Statements are constant text, so asyncpg prepares
    each once per pooled connection and later calls are a single bind-and-execute."""

    _GET = "SELECT value FROM kv WHERE key = $1 AND expires_at > now()"
    _SET = """
        INSERT INTO kv (key, value, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
    """
    _DELETE = "DELETE FROM kv WHERE key = $1"
    # ON CONFLICT locks the row, so concurrent increments serialise on it and none is lost.
    # An expired row that the purge has not reached yet counts as missing.
    _INCR = """
        INSERT INTO kv AS t (key, value, expires_at)
        VALUES ($1, convert_to($2::bigint::text, 'UTF8'), now() + make_interval(secs => $3))
        ON CONFLICT (key) DO UPDATE SET
            value = CASE WHEN t.expires_at > now()
                         THEN convert_to((convert_from(t.value, 'UTF8')::bigint + $2::bigint)::text, 'UTF8')
                         ELSE excluded.value END,
            expires_at = CASE WHEN t.expires_at > now() THEN t.expires_at ELSE excluded.expires_at END
        RETURNING convert_from(value, 'UTF8')::bigint
    """
    # SKIP LOCKED: every worker process purges, and they must not queue behind each other.
    _PURGE = """
        WITH doomed AS (
            SELECT key FROM kv WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        DELETE FROM kv USING doomed WHERE kv.key = doomed.key AND kv.expires_at <= now()
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @staticmethod
    def select_sql(key_param: str) -> str:
        """A scalar subquery reading the value of the key passed as ``key_param`` (NULL when missing
        or expired), for a caller that reads it within a statement of its own: one round trip for both.
        Only this backend has it; callers must fall back to ``get`` without it."""
        return f"(SELECT value FROM kv WHERE key = {key_param} AND expires_at > now())"

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._pool.fetchval(self._GET, key)
        return value

    async def set(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._pool.execute(self._SET, key, bytes(value), _check_ttl(ttl))

    async def delete(self, key: str) -> None:
        await self._pool.execute(self._DELETE, key)

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        try:
            value: int = await self._pool.fetchval(self._INCR, key, int(amount), _check_ttl(ttl))
        except asyncpg.DataError as exc:  # not digits, not UTF-8, or out of bigint range
            raise ValueError(f"kv key {key!r} does not hold a whole number: {exc}") from None
        return value

    async def purge_expired(self) -> int:
        total = 0
        while True:
            status = await self._pool.execute(self._PURGE, PURGE_BATCH)
            count = int(status.rsplit(" ", 1)[-1])  # "DELETE n"
            total += count
            if count < PURGE_BATCH:
                return total


class RedisStore:
    """Redis through ``redis.asyncio``; every key carries the ``keystage:`` prefix so a shared
    Redis can be inspected and cleaned by prefix. Expiry is Redis's own."""

    # INCRBY and "set the expiry only if the key has none" in one atomic round trip; a script
    # rather than EXPIRE NX so that Redis 6 works too.
    _INCR_LUA = """
        local value = redis.call('INCRBY', KEYS[1], ARGV[1])
        if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        return value
    """

    def __init__(self, client: Any, *, prefix: str = REDIS_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._incr = client.register_script(self._INCR_LUA)

    @staticmethod
    def _ms(ttl: float) -> int:
        # Round up: a ttl below a millisecond must still be a live key, not an error.
        return max(1, math.ceil(_check_ttl(ttl) * 1000))

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._redis.get(self._prefix + key)
        return value

    async def set(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._redis.set(self._prefix + key, bytes(value), px=self._ms(ttl))

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        import redis.exceptions

        ms = self._ms(ttl)
        try:
            return int(await self._incr(keys=[self._prefix + key], args=[int(amount), ms]))
        except redis.exceptions.ResponseError as exc:
            if "not an integer" in str(exc) or "overflow" in str(exc):
                raise ValueError(f"kv key {key!r} does not hold a whole number: {exc}") from None
            raise

    async def purge_expired(self) -> int:
        return 0


class ClosedStore:
    """Stands in for the store while the runtime is not open, so misuse fails with a clear message."""

    def _closed(self) -> RuntimeError:
        return RuntimeError("the key-value store is not open: call `await keystage.open()` first")

    async def get(self, key: str) -> bytes | None:
        raise self._closed()

    async def set(self, key: str, value: bytes, *, ttl: float) -> None:
        raise self._closed()

    async def delete(self, key: str) -> None:
        raise self._closed()

    async def incr(self, key: str, amount: int = 1, *, ttl: float) -> int:
        raise self._closed()

    async def purge_expired(self) -> int:
        raise self._closed()


CLOSED = ClosedStore()


def create_store(keystage: Keystage) -> KeyValueStore:
    """The store for an opened runtime: Redis when ``KEYSTAGE_REDIS_URL`` is set, else PostgreSQL."""
    if keystage.redis is not None:
        return RedisStore(keystage.redis)
    return PostgresStore(keystage.pool)


async def purge_periodically(store: KeyValueStore, interval: float = PURGE_INTERVAL) -> None:
    """Purge expired keys forever, every ``interval`` seconds give or take half (so that workers
    started together spread out). Failures are logged and retried at the next round."""
    while True:
        await asyncio.sleep(interval * (0.5 + random.random()))
        try:
            purged = await store.purge_expired()
        except Exception:  # a failed purge only delays cleanup; it must not end the loop
            log.warning("purging expired keys failed; retrying later", exc_info=True)
        else:
            if purged:
                log.debug("purged %d expired keys", purged)


def start_purging(store: KeyValueStore) -> asyncio.Task[None] | None:
    """Start the purge loop for stores that need one (PostgreSQL); None for Redis."""
    if isinstance(store, RedisStore):
        return None
    return asyncio.create_task(purge_periodically(store), name="keystage-kv-purge")


__all__ = [
    "KeyValueStore", "PostgresStore", "RedisStore", "create_store", "purge_periodically", "start_purging",
]
