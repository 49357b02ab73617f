"""Brute-force protection: failed passwords and codes are counted, and attempts slow down as they fail.

Counters (one row each in ``throttle_counters``, migration 0007):

* ``user_ip`` — per (identifier, client IP): what one client does to one account. Blocks.
* ``ip`` — per client IP across identifiers: password spraying. Blocks, with a higher allowance.
* ``user`` — per identifier across IPs. Never blocks (that would let anyone lock an account out by
  failing on purpose); it is read by the ``reputation`` policy and shown by ``keystage security show``.
* ``code`` — per user, for second-factor codes (TOTP, recovery codes). Blocks: only someone who has
  already passed the first factor can fail here.

After ``delay_after`` failures every further attempt must wait ``base_delay * 2**(failures -
delay_after)`` seconds (at most ``max_delay``) after the last failure; an attempt made earlier is
refused without checking the password, and is not counted. A counter is forgotten ``forget_after``
seconds after its last failure: there is no permanent lockout. A success clears the caller's own
``user_ip`` and ``user`` counters, never the IP's: a client that has not failed is never slowed
down by others failing, and one that has cannot wipe its spraying record with one good account.

Identifiers are counted as typed (case-folded), known account or not, so that the delays and the
message are the same for every identifier: nothing tells whether an account exists.

PostgreSQL holds the truth. With Redis configured, the hot read (``check``) goes to Redis; every
write goes to PostgreSQL first and the row it returns is copied to Redis. A marker key says that
Redis holds every live counter; when it is missing (a new or flushed Redis) reads fall back to
PostgreSQL while one background task copies the live rows over and sets the marker. Redis must not
evict keys on its own (``maxmemory-policy noeviction`` or a ``volatile-*`` policy).

Every block (a failure after which the next attempt must wait) and every unblock (the wait has
passed, a success, an admin clearing the counter) is an event: ``brute_force_blocked`` and
``brute_force_unblocked``.

Requests sent all at once would all pass the check before any of them counts, so ``check`` also
reserves a place among the attempts in flight (a key-value counter per scope, ``IN_FLIGHT``): one
at a time per (identifier, IP) and per user for codes, a few at a time per IP. An attempt beyond that
waits for a place (up to ``IN_FLIGHT_WAIT`` seconds, then it is refused like one during a delay), so
attempts of one client are checked one after the other, each seeing the failures counted before it.
``failed``/``succeeded`` free the place after counting (or
``release`` when the stage gives up); a place a crashed request kept frees itself after
``IN_FLIGHT_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from . import events
from .kv import REDIS_PREFIX

if TYPE_CHECKING:
    from .runtime import Keystage

log = logging.getLogger("keystage.throttle")

STATE_KEY = "throttle"
KV_PREFIX = "throttle:"
# "Redis holds every live counter of this database" (one marker per database: deployments or test
# runs that share a Redis never take each other's marker for their own).
MARKER = "throttle:loaded"
MARKER_TTL = 7 * 24 * 3600
MAX_IDENTIFIER = 254
# One failure in this many also deletes a batch of forgotten rows (no separate purge loop needed).
PURGE_ONE_IN = 50
PURGE_BATCH = 1000
# Attempts that may be checked at once, per scope (see the module doc), and how long a place lasts.
IN_FLIGHT = {"user_ip": 1, "ip": 8, "code": 1}
IN_FLIGHT_TTL = 15.0
# How long an attempt waits for a place before it is refused (a double-clicked "Sign in" waits for
# the first click's check instead of failing), and the pause between tries.
IN_FLIGHT_WAIT = 2.0
IN_FLIGHT_PAUSE = 0.05

Scope = Literal["user_ip", "ip", "user", "code"]
SCOPES: tuple[str, ...] = ("user_ip", "ip", "user", "code")
Kind = Literal["password", "code"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one scope slows down: free attempts, then a delay doubling per failure, up to a cap."""

    delay_after: int
    base_delay: float
    max_delay: float
    forget_after: float
    blocks: bool = True

    def delay(self, failures: int) -> float:
        if not self.blocks or failures < self.delay_after:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(failures - self.delay_after, 40)))


DEFAULT_RULES: dict[str, Rule] = {
    "user_ip": Rule(delay_after=5, base_delay=1.0, max_delay=900.0, forget_after=24 * 3600),
    "ip": Rule(delay_after=20, base_delay=1.0, max_delay=3600.0, forget_after=24 * 3600),
    "user": Rule(delay_after=0, base_delay=0.0, max_delay=0.0, forget_after=24 * 3600, blocks=False),
    "code": Rule(delay_after=5, base_delay=1.0, max_delay=900.0, forget_after=24 * 3600),
}


@dataclasses.dataclass(frozen=True)
class Counter:
    scope: str
    username: str
    ip: str
    failures: int
    last_failure: float  # seconds since the epoch
    unblocked_at: float | None
    expires_at: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.scope, self.username, self.ip)

    def encode(self) -> bytes:
        unblocked = "-" if self.unblocked_at is None else f"{self.unblocked_at:.6f}"
        return f"{self.failures} {self.last_failure:.6f} {unblocked} {self.expires_at:.6f}".encode()

    @classmethod
    def decode(cls, key: tuple[str, str, str], raw: bytes) -> Counter | None:
        try:
            failures, last, unblocked, expires = raw.decode().split(" ")
            return cls(*key, int(failures), float(last), None if unblocked == "-" else float(unblocked),
                       float(expires))
        except (ValueError, UnicodeDecodeError):
            return None

    def as_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "username": self.username or None, "ip": self.ip or None,
                "failures": self.failures, "last_failure": _iso(self.last_failure),
                "expires_at": _iso(self.expires_at)}


@dataclasses.dataclass
class Attempt:
    """The result of ``check``: pass it back to ``failed`` or ``succeeded``."""

    kind: str
    username: str
    ip: str
    user_id: int | None
    counters: dict[tuple[str, str, str], Counter | None]
    retry_after: float  # seconds until an attempt is allowed; 0 when it is
    reserved: list[str] = dataclasses.field(default_factory=list)  # in-flight places held (kv keys)

    @property
    def blocked(self) -> bool:
        return self.retry_after > 0


def normalize(username: str | None) -> str:
    return (username or "").strip().casefold()[:MAX_IDENTIFIER]


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def _ts(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def _row(row: Any) -> Counter:
    unblocked = row["unblocked_at"]
    return Counter(row["scope"], row["username"], row["ip"], int(row["failures"]), row["last_failure"].timestamp(),
                   None if unblocked is None else unblocked.timestamp(), row["expires_at"].timestamp())


def _kv_key(key: tuple[str, str, str]) -> str:
    scope, username, ip = key
    # An IP address never holds '/', so "<ip>/<username>" cannot be read two ways.
    return f"{KV_PREFIX}{scope}:{ip}/{username}"


def _arrays(keys: Sequence[tuple[str, str, str]]) -> tuple[list[str], list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


_COLUMNS = "t.scope, t.username, t.ip, t.failures, t.last_failure, t.unblocked_at, t.expires_at"


class Throttle:
    """The brute-force counters of one keystage process (``throttle_of(keystage)``)."""

    _LOAD = f"""
        SELECT {_COLUMNS}
        FROM unnest($1::text[], $2::text[], $3::text[]) AS k(scope, username, ip)
        JOIN throttle_counters t ON t.scope = k.scope AND t.username = k.username AND t.ip = k.ip
        WHERE t.expires_at > $4
    """
    # ON CONFLICT locks the row: concurrent failures serialise and none is lost.
    _FAIL = f"""
        INSERT INTO throttle_counters AS t (scope, username, ip, failures, last_failure, expires_at)
        SELECT k.scope, k.username, k.ip, 1, $4::timestamptz, $4::timestamptz + make_interval(secs => k.forget)
        FROM unnest($1::text[], $2::text[], $3::text[], $5::float8[]) AS k(scope, username, ip, forget)
        ON CONFLICT (scope, username, ip) DO UPDATE SET
            failures = CASE WHEN t.expires_at > excluded.last_failure THEN t.failures + 1 ELSE 1 END,
            unblocked_at = NULL,
            last_failure = excluded.last_failure,
            expires_at = excluded.expires_at
        RETURNING {_COLUMNS}
    """
    # Only rows whose block was not announced yet: of several workers, one records the event.
    _UNBLOCK = f"""
        UPDATE throttle_counters t SET unblocked_at = $4::timestamptz
        FROM unnest($1::text[], $2::text[], $3::text[]) AS k(scope, username, ip)
        WHERE t.scope = k.scope AND t.username = k.username AND t.ip = k.ip
          AND t.unblocked_at IS NULL
        RETURNING {_COLUMNS}
    """
    _CLEAR = f"""
        DELETE FROM throttle_counters t
        USING unnest($1::text[], $2::text[], $3::text[]) AS k(scope, username, ip)
        WHERE t.scope = k.scope AND t.username = k.username AND t.ip = k.ip
        RETURNING {_COLUMNS}
    """
    _PURGE = """
        DELETE FROM throttle_counters WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM throttle_counters WHERE expires_at <= $1 LIMIT $2))
    """

    def __init__(self, keystage: Keystage, *, rules: dict[str, Rule] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keystage = keystage
        self.rules = {**DEFAULT_RULES, **(rules or {})}
        self.clock = clock
        self._warming: asyncio.Task[None] | None = None
        self.marker = f"{MARKER}:{_database_tag(keystage)}"

    # -- keys -------------------------------------------------------------------------

    def keys(self, kind: str, username: str, ip: str) -> list[tuple[str, str, str]]:
        if kind == "code":
            return [("code", username, "")]
        keys = [("user_ip", username, ip), ("ip", "", ip)]
        if username:
            keys.append(("user", username, ""))
        return keys

    def _retry_after(self, counters: Iterable[Counter | None], now: float) -> float:
        waits = [c.last_failure + self.rules[c.scope].delay(c.failures) - now for c in counters if c is not None]
        return max([0.0, *waits])

    def _blocking(self, counter: Counter) -> bool:
        return self.rules[counter.scope].delay(counter.failures) > 0

    def _announced(self, counter: Counter) -> bool:
        # Each failure starts a new block (and sets unblocked_at back to NULL).
        return counter.unblocked_at is not None

    # -- the three calls a stage makes -------------------------------------------------

    async def check(self, *, username: str | None, ip: str, kind: Kind = "password",
                    user_id: int | None = None) -> Attempt:
        """Load the counters of this attempt and take its in-flight places; ``attempt.blocked`` says
        whether it must be refused. Pass the attempt to ``failed``, ``succeeded`` or ``release``.

        For a client with no recent failures: one read and the place-taking, side by side.
        """
        name = normalize(username)
        keys = self.keys(kind, name, ip)
        now = self.clock()
        places = self._places(keys)
        deadline = time.monotonic() + IN_FLIGHT_WAIT
        while True:
            counters, counts = await asyncio.gather(self.load(keys, now=now), self._take(places))
            attempt = Attempt(kind, name, ip, user_id, counters, self._retry_after(counters.values(), now),
                              [key for key, _ in places])
            busy = any(count > limit for count, (_, limit) in zip(counts, places))
            if not busy and not attempt.blocked:
                break
            await self.release(attempt)
            if attempt.blocked:
                break
            if time.monotonic() >= deadline:
                # Other attempts of the same client kept every place: refuse as during a delay.
                attempt.retry_after = 1.0
                break
            await asyncio.sleep(IN_FLIGHT_PAUSE)  # wait for the attempt in front, then look again
            now = self.clock()
        # A wait that has passed ends the block: say so once (the UPDATE picks one worker).
        ended = [c for c in counters.values()
                 if c is not None and self._blocking(c) and not self._announced(c)
                 and c.last_failure + self.rules[c.scope].delay(c.failures) <= now]
        if ended:
            rows = await self._write(self._UNBLOCK, [c.key for c in ended], now)
            for counter in rows:
                attempt.counters[counter.key] = counter
            await self._events("brute_force_unblocked", rows, attempt, reason="elapsed")
        return attempt

    @staticmethod
    def _places(keys: Sequence[tuple[str, str, str]]) -> list[tuple[str, int]]:
        return [(f"{KV_PREFIX}inflight:{scope}:{ip}/{username}", IN_FLIGHT[scope])
                for scope, username, ip in keys if scope in IN_FLIGHT]

    async def _take(self, places: list[tuple[str, int]]) -> list[int]:
        kv = self.keystage.kv
        return list(await asyncio.gather(*[kv.incr(key, 1, ttl=IN_FLIGHT_TTL) for key, _ in places]))

    async def release(self, attempt: Attempt) -> None:
        """Free the attempt's in-flight places (``failed`` and ``succeeded`` do it themselves)."""
        reserved, attempt.reserved = attempt.reserved, []
        if reserved:
            kv = self.keystage.kv
            await asyncio.gather(*[kv.incr(key, -1, ttl=IN_FLIGHT_TTL) for key in reserved])

    async def failed(self, attempt: Attempt) -> list[Counter]:
        """Count a failure for every counter of ``attempt``; records a block event where a wait starts."""
        now = self.clock()
        keys = list(attempt.counters)
        counters = await self._write(self._FAIL, keys, now, [float(self.rules[k[0]].forget_after) for k in keys])
        blocked = [c for c in counters if self._blocking(c)]
        await self.release(attempt)  # after counting: the next attempt in line sees this failure
        await self._events("brute_force_blocked", blocked, attempt, now=now)
        if random.randrange(PURGE_ONE_IN) == 0:
            await self.keystage.pool.execute(self._PURGE, _ts(now), PURGE_BATCH)
        return counters

    async def succeeded(self, attempt: Attempt) -> None:
        """Clear the caller's own counters after a success (never the IP's: see the module doc)."""
        mine = [c for c in attempt.counters.values() if c is not None and c.scope != "ip"]
        if not mine:
            await self.release(attempt)  # the common case: nothing else to write
            return
        rows, _ = await asyncio.gather(self._write(self._CLEAR, [c.key for c in mine], self.clock()),
                                       self.release(attempt))
        await self._events("brute_force_unblocked",
                           [c for c in rows if self._blocking(c) and not self._announced(c)], attempt,
                           reason="success")

    # -- reading -----------------------------------------------------------------------

    async def load(self, keys: Sequence[tuple[str, str, str]], *, now: float | None = None
                   ) -> dict[tuple[str, str, str], Counter | None]:
        """The live counters for ``keys`` (None where there is none)."""
        now = self.clock() if now is None else now
        found: dict[tuple[str, str, str], Counter | None] = {k: None for k in keys}
        if self.keystage.redis is not None:
            # One MGET rather than a get per key (the key-value interface has no batch read yet).
            values = await self.keystage.redis.mget([REDIS_PREFIX + self.marker,
                                                     *[REDIS_PREFIX + _kv_key(k) for k in keys]])
            if values[0] is not None:
                for key, raw in zip(keys, values[1:]):
                    counter = Counter.decode(key, raw) if raw is not None else None
                    if counter is not None and counter.expires_at > now:
                        found[key] = counter
                return found
            self._start_warming()
        scopes, usernames, ips = _arrays(keys)
        for row in await self.keystage.pool.fetch(self._LOAD, scopes, usernames, ips, _ts(now)):
            counter = _row(row)
            found[counter.key] = counter
        return found

    async def score(self, scope: str, username: str = "", ip: str = "") -> int:
        """The failures counted now for one counter (0 when none)."""
        key = (scope, normalize(username), ip)
        counter = (await self.load([key]))[key]
        return counter.failures if counter else 0

    # -- administration ------------------------------------------------------------------

    async def list(self, *, username: str | None = None, ip: str | None = None, limit: int = 1000) -> list[Counter]:
        """Live counters, most recent failure first, filtered by identifier and/or IP."""
        rows = await self.keystage.pool.fetch(
            f"""SELECT {_COLUMNS} FROM throttle_counters t
                WHERE t.expires_at > $1 AND ($2::text IS NULL OR t.username = $2) AND ($3::text IS NULL OR t.ip = $3)
                ORDER BY t.last_failure DESC LIMIT $4""",
            _ts(self.clock()), None if username is None else normalize(username), ip, limit)
        return [_row(r) for r in rows]

    def retry_after(self, counter: Counter) -> float:
        return max(0.0, counter.last_failure + self.rules[counter.scope].delay(counter.failures) - self.clock())

    async def clear(self, *, username: str | None = None, ip: str | None = None, everything: bool = False
                    ) -> list[Counter]:
        """Delete counters (by identifier, IP, both, or all); each block this ends is an event."""
        if username is None and ip is None and not everything:
            raise ValueError("say which counters to clear: a username, an IP, or everything")
        rows = await self.keystage.pool.fetch(
            f"""DELETE FROM throttle_counters t
                WHERE ($1::text IS NULL OR t.username = $1) AND ($2::text IS NULL OR t.ip = $2)
                RETURNING {_COLUMNS}""",
            None if username is None else normalize(username), ip)
        counters = [_row(r) for r in rows]
        if self.keystage.redis is not None:
            await asyncio.gather(*[self.keystage.kv.delete(_kv_key(c.key)) for c in counters])
        now = self.clock()
        for counter in counters:
            if counter.expires_at > now and self._blocking(counter) and not self._announced(counter):
                attempt = Attempt("admin", counter.username, counter.ip, None, {}, 0.0)
                await self._events("brute_force_unblocked", [counter], attempt, reason="admin")
        return counters

    # -- writing -------------------------------------------------------------------------

    async def _write(self, query: str, keys: Sequence[tuple[str, str, str]], now: float,
                     *extra: Any) -> list[Counter]:
        scopes, usernames, ips = _arrays(keys)
        params = () if query is self._CLEAR else (_ts(now), *extra)
        rows = await self.keystage.pool.fetch(query, scopes, usernames, ips, *params)
        counters = [_row(r) for r in rows]
        if self.keystage.redis is not None:
            kv = self.keystage.kv
            if query is self._CLEAR:
                await asyncio.gather(*[kv.delete(_kv_key(c.key)) for c in counters])
            else:
                await asyncio.gather(*[kv.set(_kv_key(c.key), c.encode(), ttl=max(1.0, c.expires_at - now))
                                       for c in counters])
        return counters

    async def _events(self, action: str, counters: Sequence[Counter], attempt: Attempt, *,
                      now: float | None = None, reason: str | None = None) -> None:
        for counter in counters:
            context: dict[str, Any] = {"scope": counter.scope, "failures": counter.failures, "kind": attempt.kind}
            if action == "brute_force_blocked":
                delay = self.rules[counter.scope].delay(counter.failures)
                context.update(delay=delay, until=_iso((now or counter.last_failure) + delay))
            if reason:
                context["reason"] = reason
            await events.record(self.keystage, events.Event(
                action, user_id=attempt.user_id, username=counter.username or attempt.username or None,
                client_ip=counter.ip or attempt.ip or None, context=context,
            ))

    # -- Redis warm-up -----------------------------------------------------------------------

    def _start_warming(self) -> None:
        if self._warming is None or self._warming.done():
            self._warming = asyncio.create_task(self._warm(), name="keystage-throttle-warm")

    async def _warm(self) -> None:
        """Copy every live counter from PostgreSQL to Redis, then set the marker."""
        try:
            now = self.clock()
            kv = self.keystage.kv
            async with self.keystage.pool.acquire() as conn, conn.transaction():
                cursor = conn.cursor(f"SELECT {_COLUMNS} FROM throttle_counters t WHERE t.expires_at > $1",
                                     _ts(now))
                batch: list[Counter] = []
                async for row in cursor:
                    batch.append(_row(row))
                    if len(batch) >= 500:
                        await self._copy(kv, batch, now)
                        batch = []
                await self._copy(kv, batch, now)
            await kv.set(self.marker, b"1", ttl=MARKER_TTL)
        except Exception:  # the next check starts another attempt; reads stay on PostgreSQL meanwhile
            log.warning("copying brute-force counters to Redis failed", exc_info=True)

    @staticmethod
    async def _copy(kv: Any, counters: list[Counter], now: float) -> None:
        await asyncio.gather(*[kv.set(_kv_key(c.key), c.encode(), ttl=max(1.0, c.expires_at - now))
                               for c in counters])

    async def close(self) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)


def _database_tag(keystage: Keystage) -> str:
    from .database import database_url
    from .errors import StartupError

    try:
        url = database_url(keystage.settings)
    except StartupError:
        url = ""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def throttle_of(keystage: Keystage) -> Throttle:
    """The process's ``Throttle`` (made on first use, kept in ``keystage.state``)."""
    found = keystage.state.get(STATE_KEY)
    if found is None:
        found = keystage.state[STATE_KEY] = Throttle(keystage)
    return found  # type: ignore[no-any-return]


__all__ = ["DEFAULT_RULES", "Attempt", "Counter", "Rule", "Throttle", "normalize", "throttle_of"]
