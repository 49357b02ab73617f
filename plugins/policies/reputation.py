"""Policy ``reputation``: scores per client IP and per username, lowered by failed logins and
raised by successful ones; passes while the scores stay above a threshold.

Scores live in the key-value store (Redis when configured) for speed and are written
through to PostgreSQL (``reputation_scores``) so they survive a Redis restart; a score
missing from the store is read back from the table.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pydantic

from keystage.engine.events import Event
from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType

SCORE_TTL = 30 * 24 * 3600
MIN_SCORE, MAX_SCORE = -1000, 5


class ReputationConfig(PolicyConfig):
    check_ip: bool = True
    check_username: bool = True
    threshold: int = pydantic.Field(default=-5, ge=-1000, le=0)


def _key(kind: str, value: str) -> str:
    return f"reputation:{kind}:{value.casefold()}"


async def score(keystage: Any, kind: str, value: str) -> int:
    raw = await keystage.kv.get(_key(kind, value))
    if raw is not None:
        return int(raw)
    stored = await keystage.pool.fetchval(
        "SELECT score FROM reputation_scores WHERE kind = $1 AND identifier = $2", kind, value.casefold())
    return int(stored or 0)


async def adjust(keystage: Any, kind: str, value: str, delta: int) -> int:
    """Change a score by ``delta`` (clamped), in the store and the table; one statement each."""
    new = await keystage.pool.fetchval(
        """INSERT INTO reputation_scores (kind, identifier, score) VALUES ($1, $2, GREATEST($4::int, LEAST($5::int, $3::int)))
           ON CONFLICT (kind, identifier) DO UPDATE
           SET score = GREATEST($4::int, LEAST($5::int, reputation_scores.score + $3::int)), updated_at = now()
           RETURNING score""",
        kind, value.casefold(), delta, MIN_SCORE, MAX_SCORE,
    )
    await keystage.kv.set(_key(kind, value), str(new).encode(), ttl=SCORE_TTL)
    return int(new)


class ReputationPolicy(PolicyType):
    type_name = "reputation"
    Config = ReputationConfig
    config: ReputationConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        keystage = request.keystage
        if self.config.check_ip and request.request is not None:
            if await score(keystage, "ip", request.request.client_ip) <= self.config.threshold:
                return PolicyResult(False, (N_("Too many failed attempts. Please try again later."),))
        if self.config.check_username:
            username = request.context.get("pending_identifier") or (request.user.username if request.user else None)
            if username and await score(keystage, "username", str(username)) <= self.config.threshold:
                return PolicyResult(False, (N_("Too many failed attempts. Please try again later."),))
        return PolicyResult(True)


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [ReputationPolicy]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "reputation_sql"


@hookimpl
async def on_event(event: Event, keystage: Any) -> None:
    if event.action not in ("login_failed", "login"):
        return
    delta = -1 if event.action == "login_failed" else 1
    targets = [(kind, value) for kind, value in (("ip", event.client_ip), ("username", event.username)) if value]
    if targets:
        await adjust_many(keystage, targets, delta)


async def adjust_many(keystage: Any, targets: list[tuple[str, str]], delta: int) -> None:
    """``adjust`` for several scores: one statement, and the store writes side by side."""
    rows = await keystage.pool.fetch(
        """INSERT INTO reputation_scores (kind, identifier, score)
           SELECT kind, identifier, GREATEST($4::int, LEAST($5::int, $3::int))
           FROM unnest($1::text[], $2::text[]) AS t(kind, identifier)
           ON CONFLICT (kind, identifier) DO UPDATE
           SET score = GREATEST($4::int, LEAST($5::int, reputation_scores.score + $3::int)), updated_at = now()
           RETURNING kind, identifier, score""",
        [k for k, _ in targets], [v.casefold() for _, v in targets], delta, MIN_SCORE, MAX_SCORE,
    )
    await asyncio.gather(*[
        keystage.kv.set(_key(r["kind"], r["identifier"]), str(r["score"]).encode(), ttl=SCORE_TTL) for r in rows
    ])
