"""Policy ``reputation``: passes while a client IP and an identifier have few recent failures.

It reads the brute-force counters (``keystage.engine.throttle``): one set of counters for the
whole server. The score of an IP or identifier is minus its failures in the counters' window
(the ``ip`` and ``user`` counters); a success clears the identifier's score, never the IP's.
Unlike the built-in throttle, which only slows a client down, this policy denies outright, and
checking the identifier lets anyone who fails on purpose keep its owner out: bind it with care.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic

from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType
from keystage.engine.throttle import normalize, throttle_of

KINDS = {"ip": "ip", "username": "user"}


class ReputationConfig(PolicyConfig):
    check_ip: bool = True
    check_username: bool = True
    threshold: int = pydantic.Field(default=-5, ge=-1000, le=0)


async def score(keystage: Any, kind: str, value: str) -> int:
    """Minus the recent failures of an IP (``kind="ip"``) or an identifier (``kind="username"``)."""
    if kind == "ip":
        return -await throttle_of(keystage).score("ip", ip=value)
    return -await throttle_of(keystage).score(KINDS[kind], username=value)


class ReputationPolicy(PolicyType):
    type_name = "reputation"
    Config = ReputationConfig
    config: ReputationConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        keys = []
        if self.config.check_ip and request.request is not None:
            keys.append(("ip", "", request.request.client_ip))
        if self.config.check_username:
            username = request.context.get("pending_identifier") or (request.user.username if request.user else None)
            if username:
                keys.append(("user", normalize(str(username)), ""))
        if not keys:
            return PolicyResult(True)
        counters = await throttle_of(request.keystage).load(keys)  # one round trip for both
        if any(c is not None and -c.failures <= self.config.threshold for c in counters.values()):
            return PolicyResult(False, (N_("Too many failed attempts. Please try again later."),))
        return PolicyResult(True)


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [ReputationPolicy]


@hookimpl
def register_migrations() -> Path:
    # 0001 made the policy's own score table; 0002 drops it now that the scores are the throttle's.
    return Path(__file__).parent / "reputation_sql"
