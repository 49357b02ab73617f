"""Evaluating the policy bindings of a target (flow, stage binding, ...).

Semantics, documented in docs/admin/policies.md:

* Disabled bindings are ignored. A target with no enabled binding **passes**: binding
  nothing means "no restriction" (the same rule as authentik's); bind a deny policy to
  close a flow.
* A user binding passes for that user, a group binding for members of the group or of
  any group below it; with no user (anonymous) both fail.
* A policy binding runs the policy type with the binding's timeout. An exception, a
  timeout, an unknown policy type, a bad config or a non-``PolicyResult`` answer is a
  failure: the result is the binding's ``failure_result`` (default false: fail closed),
  and an event ``policy_exception`` records the policy's name and the reason.
* ``negate`` flips the (non-failure) result. Mode ``all`` needs every binding to pass,
  ``any`` at least one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from . import events
from .policy import PolicyRequest, PolicyResult, PolicyType

if TYPE_CHECKING:
    from .runtime import Keystage

log = logging.getLogger("keystage.policies")


@dataclasses.dataclass(frozen=True)
class Binding:
    id: int
    order: int
    enabled: bool
    negate: bool
    timeout: int
    failure_result: bool
    user_id: int | None = None
    group_id: int | None = None
    policy_name: str | None = None
    policy_type: str | None = None
    policy_config: dict[str, Any] | None = None
    policy_id: int | None = None
    policy_version: int = 0

    @classmethod
    def from_row(cls, row: Any) -> Binding:
        import json

        config = row["policy_config"]
        return cls(
            id=row["id"], order=row["order"], enabled=row["enabled"], negate=row["negate"],
            timeout=row["timeout"], failure_result=row["failure_result"], user_id=row["user_id"],
            group_id=row["group_id"], policy_name=row["policy_name"], policy_type=row["policy_type"],
            policy_config=json.loads(config) if isinstance(config, str) else config,
            policy_id=row["policy_id"], policy_version=row["policy_version"] or 0,
        )


BINDING_COLUMNS = """b.id, b."order", b.enabled, b.negate, b.timeout, b.failure_result, b.user_id, b.group_id,
                     p.id AS policy_id, p.version AS policy_version,
                     p.name AS policy_name, p.type AS policy_type, p.config AS policy_config"""


async def bindings_for(keystage: Keystage, *, flow_id: int | None = None, stage_binding_ids: list[int] | None = None,
                       application_ids: list[int] | None = None) -> dict[tuple[str, int], list[Binding]]:
    """Bindings of a flow, stage bindings and/or applications, in one query, keyed by (kind, id)."""
    rows = await keystage.pool.fetch(
        f"""SELECT {BINDING_COLUMNS}, b.flow_id, b.stage_binding_id, b.application_id
            FROM policy_bindings b LEFT JOIN policies p ON p.id = b.policy_id
            WHERE b.flow_id = $1 OR b.stage_binding_id = ANY($2::bigint[]) OR b.application_id = ANY($3::bigint[])
            ORDER BY b."order", b.id""",
        flow_id, stage_binding_ids or [], application_ids or [],
    )
    out: dict[tuple[str, int], list[Binding]] = {}
    for row in rows:
        if row["flow_id"] is not None:
            key = ("flow", row["flow_id"])
        elif row["stage_binding_id"] is not None:
            key = ("stage_binding", row["stage_binding_id"])
        else:
            key = ("application", row["application_id"])
        out.setdefault(key, []).append(Binding.from_row(row))
    return out


async def bindings_for_policies(keystage: Keystage, names: list[str]) -> list[Binding]:
    """Ad-hoc bindings (all must pass) for policies referenced by name, e.g. from a stage's config.

    A name with no policy behind it yields a binding of an unknown type: it fails closed.
    """
    rows = await keystage.pool.fetch(
        "SELECT id, name, type, config, version FROM policies WHERE name = ANY($1::text[])", names)
    by_name = {r["name"]: r for r in rows}
    bindings = []
    for order, name in enumerate(names):
        row = by_name.get(name)
        bindings.append(Binding(
            id=0, order=order, enabled=True, negate=False, timeout=30, failure_result=False,
            policy_name=name, policy_type=row["type"] if row else None,
            policy_config=(json.loads(row["config"]) if row else {}),
            policy_id=row["id"] if row else None, policy_version=row["version"] if row else 0,
        ))
    return bindings


async def evaluate(keystage: Keystage, bindings: list[Binding], mode: str, request: PolicyRequest) -> PolicyResult:
    enabled = [b for b in bindings if b.enabled]
    if not enabled:
        return PolicyResult(True)
    group_ids: set[int] | None = None
    results: list[PolicyResult] = []
    for binding in enabled:
        if binding.user_id is not None:
            result = PolicyResult(request.user is not None and request.user.id == binding.user_id)
        elif binding.group_id is not None:
            if request.user is not None and group_ids is None:
                group_ids = await keystage.users.group_ids(request.user.id)
            result = PolicyResult(bool(group_ids) and binding.group_id in (group_ids or set()))
        else:
            result = await _run_policy(keystage, binding, request)
            if result is None:
                results.append(PolicyResult(binding.failure_result))
                continue
        if binding.negate:
            result = PolicyResult(not result.passing, result.messages)
        results.append(result)
        # Short-circuit once the outcome is decided.
        if mode == "all" and not result.passing:
            break
        if mode == "any" and result.passing:
            break
    passing = all(r.passing for r in results) if mode == "all" else any(r.passing for r in results)
    messages = tuple(m for r in results for m in r.messages)
    inject = next((r.inject_flow for r in results if not r.passing and r.inject_flow), None)
    return PolicyResult(passing, messages, inject_flow=None if passing else inject)


class PolicyCache:
    """Recent results of cacheable policies, per process.

    Keys hold the policy's id and version, the user's id and version (which moves with
    group membership changes) and the request data the policy says it depends on, all
    read from the database in the same request: a change to any of them is a miss, so
    no invalidation message is needed between workers. Entries live ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 10.0, size: int = 50_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[float, PolicyResult]] = {}

    def get(self, key: tuple[Any, ...]) -> PolicyResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: tuple[Any, ...], result: PolicyResult) -> None:
        if len(self._entries) >= self.size:
            # Drop the oldest tenth: cheap, and the cache refills from live traffic.
            for old in list(self._entries)[: self.size // 10]:
                del self._entries[old]
        self._entries[key] = (time.monotonic() + self.ttl, result)


def _cache(keystage: Keystage) -> PolicyCache:
    cache = keystage.state.get("policy_cache")
    if cache is None:
        cache = keystage.state["policy_cache"] = PolicyCache()
    return cache


async def _run_policy(keystage: Keystage, binding: Binding, request: PolicyRequest) -> PolicyResult | None:
    """Run one policy; ``None`` means it failed (the binding's ``failure_result`` applies)."""
    reason: str
    line: int | None = None
    policy_types: dict[str, type[PolicyType]] = keystage.policy_types
    cls = policy_types.get(binding.policy_type or "")
    if cls is None:
        reason = f"unknown policy type {binding.policy_type!r}"
    else:
        try:
            policy = cls(binding.policy_name or "", cls.validate_config(binding.policy_config or {}))
            key = None
            # An instance may narrow its class's answer (an expression calling now() is not cacheable).
            if policy.cacheable and binding.policy_id is not None:
                user = request.user
                key = (binding.policy_id, binding.policy_version, user.id if user else None,
                       user.version if user else None, policy.cache_key(request))
                cached = _cache(keystage).get(key)
                if cached is not None:
                    return cached
            answer = await asyncio.wait_for(policy.passes(request), timeout=binding.timeout)
            if key is not None and isinstance(answer, PolicyResult):
                _cache(keystage).put(key, answer)
        except asyncio.TimeoutError:
            reason = f"timed out after {binding.timeout} s"
        except Exception as exc:  # a broken policy must never let anyone through
            reason = f"{type(exc).__name__}: {exc}"
            line = getattr(exc, "line", None)  # the admin's line, for expression errors
        else:
            if isinstance(answer, PolicyResult):
                return answer
            reason = f"returned {type(answer).__name__}, not a PolicyResult"
    log.warning("policy %s failed: %s", binding.policy_name, reason)
    await events.record(keystage, events.Event(
        "policy_exception",
        user_id=request.user.id if request.user else None,
        username=request.user.username if request.user else None,
        client_ip=request.request.client_ip if request.request else None,
        context={"policy": binding.policy_name, "binding": binding.id, "reason": reason, "line": line},
    ))
    return None
