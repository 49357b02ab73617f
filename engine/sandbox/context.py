"""From a policy request to the plain data an expression sees (host side, with the database).

Only plain data crosses to the workers: never the runtime, the pool, a ``User`` object
(its password hash stays here) or the settings. What an expression does not read is
not sent (``Compiled.request_attrs``): a policy that only checks group membership never
pays for the headers or the plan context. The user's group names (nested groups
included) are fetched once per user version (see ``GroupNames``), however many
expressions and requests read them.

``user_by(...)`` in an expression cannot reach the database from the worker. The host
fetches every ``user_by(username="literal")`` / ``user_by(email="literal")`` before the
first run; a lookup with a computed argument stops the run, the host fetches that user
and runs the expression again (at most a few rounds; expressions have no side effects
but their log, which restarts with each run).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..flow_context import APPLICATION
from .compiler import Compiled
from .pool import UserLoader

if TYPE_CHECKING:
    from ..policy import PolicyRequest
    from ..runtime import Keystage
    from ..users import User

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-csrf-token", "x-api-key"})

GROUP_NAMES = """
    WITH RECURSIVE g(id) AS (
        SELECT group_id FROM group_memberships WHERE user_id = $1
        UNION
        SELECT groups.parent_id FROM groups JOIN g ON groups.id = g.id WHERE groups.parent_id IS NOT NULL
    ) SELECT name FROM groups WHERE id IN (SELECT id FROM g)"""

USERS_BY = """
    SELECT u.username, u.email, u.display_name, u.is_active, u.is_superuser, u.attributes,
           ARRAY(WITH RECURSIVE g(id) AS (
                     SELECT group_id FROM group_memberships WHERE user_id = u.id
                     UNION
                     SELECT groups.parent_id FROM groups JOIN g ON groups.id = g.id
                     WHERE groups.parent_id IS NOT NULL
                 ) SELECT name FROM groups WHERE id IN (SELECT id FROM g)) AS groups
    FROM users u
    WHERE lower(u.username) = ANY($1::text[]) OR lower(u.email) = ANY($2::text[])"""


def user_data(user: User | Any, groups: list[str] | None) -> dict[str, Any]:
    """The fields of a user an expression may read (no id, no password hash, no timestamps)."""
    attributes = user.attributes if not isinstance(user.attributes, str) else json.loads(user.attributes)
    return {
        "username": user.username, "email": user.email, "name": user.display_name,
        "is_active": user.is_active, "is_superuser": user.is_superuser, "attributes": attributes or {},
        "groups": groups,
    }


def _cache(request: PolicyRequest) -> dict[str, Any]:
    # Lives exactly as long as the policy request: one planning or one stage's re-evaluation.
    cache = request.__dict__.get("_sandbox_cache")
    if cache is None:
        cache = request.__dict__["_sandbox_cache"] = {}
    return cache


class GroupNames:
    """The user's group names by (user id, user version), per process.

    Exact, not merely fresh: the user's version moves with every change to their
    memberships and to any group above them, renames included (engine/sql/0005_versions.sql),
    and the version is the one read with the user for this request. A user object
    without a version (0) is never cached.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.entries: dict[tuple[int, int], list[str]] = {}

    async def get(self, keystage: Keystage, user: Any) -> list[str]:
        version = getattr(user, "version", 0) or 0
        key = (user.id, version)
        found = self.entries.get(key) if version else None
        if found is None:
            found = [r["name"] for r in await keystage.pool.fetch(GROUP_NAMES, user.id)]
            if version:
                if len(self.entries) >= self.size:
                    for old in list(self.entries)[: self.size // 10]:
                        del self.entries[old]
                self.entries[key] = found
        return found


async def group_names(keystage: Keystage, user: Any) -> list[str]:
    cache = keystage.state.get("sandbox_group_names")
    if cache is None:
        cache = keystage.state["sandbox_group_names"] = GroupNames()
    return list(await cache.get(keystage, user))


async def policy_context(request: PolicyRequest, compiled: Compiled | Sequence[Compiled],
                         helper_names: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The context for expression policies: what ``request.*`` holds in the sandbox.

    ``compiled`` is one expression or several (one context serving them all).
    """
    expressions = [compiled] if isinstance(compiled, Compiled) else list(compiled)
    everything = any(c.request_attrs is None or c.names & helper_names for c in expressions)
    wanted = frozenset().union(*(c.request_attrs or frozenset() for c in expressions))
    uses_groups = any(c.uses_groups for c in expressions)
    cache = _cache(request)
    data: dict[str, Any] = {"user": None, "ip": None, "user_agent": "", "flow": None, "application": None}
    if request.user is not None:
        groups = None
        if everything or uses_groups:
            groups = cache.get("groups")
            if groups is None:
                groups = cache["groups"] = await group_names(request.keystage, request.user)
        data["user"] = user_data(request.user, groups)
    info = request.request
    if info is not None:
        data["ip"] = info.client_ip
        data["user_agent"] = info.user_agent
        if everything or "headers" in wanted:
            data["headers"] = {k: v for k, v in info.headers.items() if k.lower() not in SECRET_HEADERS}
    if everything or "context" in wanted:
        data["context"] = request.context
    flow = getattr(request, "flow", None)
    if flow is not None:
        data["flow"] = {"slug": getattr(flow, "slug", ""), "designation": getattr(flow, "designation", "")}
    application = getattr(request, "application", None)
    if application is not None:
        data["application"] = {"slug": getattr(application, "slug", ""), "name": getattr(application, "name", ""),
                               "attributes": getattr(application, "attributes", None) or {}}
    elif request.context.get(APPLICATION.name):
        data["application"] = {"slug": str(request.context[APPLICATION.name])}
    return data


def user_loader(keystage: Keystage) -> UserLoader:
    """What ``user_by`` falls back to: one query for every user asked for."""

    async def load(wanted: list[tuple[str, str]]) -> dict[str, Any]:
        usernames = sorted({v.lower() for f, v in wanted if f == "username"})
        emails = sorted({v.lower() for f, v in wanted if f == "email"})
        found: dict[str, Any] = {f"{f}:{v.lower()}": None for f, v in wanted}
        for row in await keystage.pool.fetch(USERS_BY, usernames, emails):
            data = user_data(_Row(row), list(row["groups"]))
            if row["username"].lower() in usernames:
                found[f"username:{row['username'].lower()}"] = data
            if row["email"] and row["email"].lower() in emails:
                found[f"email:{row['email'].lower()}"] = data
        return found

    return load


class _Row:
    def __init__(self, row: Any) -> None:
        self.username = row["username"]
        self.email = row["email"]
        self.display_name = row["display_name"]
        self.is_active = row["is_active"]
        self.is_superuser = row["is_superuser"]
        self.attributes = row["attributes"]
