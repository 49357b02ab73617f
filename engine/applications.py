"""Applications and providers: what users open, and the protocol settings behind each.

An **application** is what a user sees in the library (name, description, launch URL, icon,
group) and what policies guard: its policy bindings decide who may see and use it. With no
enabled binding, every signed-in user may (the same rule as flows, docs/admin/policies.md);
an error, a timeout or a missing policy denies (fail closed).

A **provider** is one protocol's settings for one client (``type`` names a provider type
registered through ``register_provider_types``; its ``config`` is validated by that type).
An application has at most one provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

from . import policy_engine
from .policy import PolicyRequest, PolicyResult
from .registry import collect_types

if TYPE_CHECKING:
    from .request_info import RequestInfo
    from .runtime import Keystage
    from .users import User

log = logging.getLogger("keystage.applications")


class ProviderConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class ProviderType:
    """Base of provider protocol types. Subclasses set ``type_name`` and ``Config``."""

    type_name: ClassVar[str]
    Config: ClassVar[type[ProviderConfig]] = ProviderConfig

    @classmethod
    def validate_config(cls, raw: dict[str, Any]) -> ProviderConfig:
        return cls.Config.model_validate(dict(raw))

    @classmethod
    async def resolve_config(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """What an admin wrote, completed before validation, when a blueprint is applied (for
        instance: metadata fetched from a URL the admin gave). Raise ``ValueError`` to refuse."""
        return raw

    @classmethod
    def launch_url(cls, application_slug: str, config: dict[str, Any]) -> str | None:
        """Where the library page sends a user for an application with no launch URL of its own
        (for instance: IdP-initiated sign-in). ``config`` is the stored configuration."""
        return None


def provider_types(keystage: Keystage) -> dict[str, type[ProviderType]]:
    """``{type_name: class}`` of every plugin's ``register_provider_types``, collected once per kernel."""
    found = keystage.state.get("provider_types")
    if found is None:
        found = keystage.state["provider_types"] = collect_types(
            keystage.plugins, "register_provider_types", ProviderType, "provider")
    return found


@dataclasses.dataclass(frozen=True)
class Application:
    id: int
    slug: str
    name: str
    description: str
    launch_url: str | None
    icon: str | None
    group: str
    provider_id: int | None
    policy_engine_mode: str

    @property
    def attributes(self) -> dict[str, Any]:  # what expressions see as request.application.attributes
        return {"group": self.group}

    @classmethod
    def from_row(cls, row: Any) -> Application:
        return cls(id=row["id"], slug=row["slug"], name=row["name"], description=row["description"],
                   launch_url=row["launch_url"], icon=row["icon"], group=row["group"],
                   provider_id=row["provider_id"], policy_engine_mode=row["policy_engine_mode"])


COLUMNS = 'id, slug, name, description, launch_url, icon, "group", provider_id, policy_engine_mode'


async def get_application(keystage: Keystage, *, slug: str | None = None, id: int | None = None) -> Application | None:
    row = await keystage.pool.fetchrow(f"SELECT {COLUMNS} FROM applications WHERE slug = $1 OR id = $2", slug, id)
    return Application.from_row(row) if row else None


def _policy_request(keystage: Keystage, app: Application | None, user: User | None,
                    request: RequestInfo | None) -> PolicyRequest:
    context = {"application": app.slug} if app else {}
    return PolicyRequest(keystage, user, request, context, application=app)  # type: ignore[arg-type]


async def check_access(keystage: Keystage, app: Application, user: User | None,
                       request: RequestInfo | None, *, unbound: bool = False) -> PolicyResult:
    """Whether ``user`` may use ``app``: its policy bindings, evaluated (an inactive or no user never may).
    ``unbound``: the caller has just read that nothing is bound to ``app`` (saves the query)."""
    if user is None or not user.is_active:
        return PolicyResult(False)
    if unbound:
        return PolicyResult(True)
    bindings = await policy_engine.bindings_for(keystage, application_ids=[app.id])
    return await policy_engine.evaluate(keystage, bindings.get(("application", app.id), []),
                                        app.policy_engine_mode, _policy_request(keystage, app, user, request))


async def library(keystage: Keystage, user: User, request: RequestInfo | None) -> list[Application]:
    """The applications ``user`` may use, ordered by group and name.

    Two queries (applications, every binding) and one batch per sandbox worker for all expression
    policies (``passes_many``), however many applications there are.
    """
    if not user.is_active:
        return []
    rows = await keystage.pool.fetch(f'SELECT {COLUMNS} FROM applications ORDER BY "group", lower(name), slug')
    apps = [Application.from_row(r) for r in rows]
    bindings = await policy_engine.bindings_for(keystage, application_ids=[a.id for a in apps])
    results = await _binding_results(keystage, bindings, user, request)
    allowed = []
    for app in apps:
        enabled = [b for b in bindings.get(("application", app.id), []) if b.enabled]
        if not enabled:
            allowed.append(app)
            continue
        outcomes = [results[b.id] for b in enabled]
        if all(outcomes) if app.policy_engine_mode == "all" else any(outcomes):
            allowed.append(app)
    return allowed


async def _binding_results(keystage: Keystage, bindings: dict[tuple[str, int], list[policy_engine.Binding]],
                           user: User, request: RequestInfo | None) -> dict[int, bool]:
    """Each enabled binding's outcome (negation and failure_result applied), policies batched."""
    every = [b for items in bindings.values() for b in items if b.enabled]
    group_ids = await keystage.users.group_ids(user.id) if any(b.group_id is not None for b in every) else set()
    outcome: dict[int, bool] = {}
    batch: list[tuple[policy_engine.Binding, Any]] = []
    others: list[policy_engine.Binding] = []
    expression_type = keystage.policy_types.get("expression")
    built: dict[tuple[int | None, int], Any] = keystage.state.setdefault("library_policies", {})
    cache = policy_engine._cache(keystage)
    cache_request = _policy_request(keystage, None, user, request)
    keys: dict[int, tuple[Any, ...]] = {}
    for binding in every:
        if binding.user_id is not None:
            outcome[binding.id] = (user.id == binding.user_id) != binding.negate
        elif binding.group_id is not None:
            outcome[binding.id] = (binding.group_id in group_ids) != binding.negate
        elif expression_type is not None and binding.policy_type == "expression":
            # Built once per policy version (validation and compilation are most of its cost).
            key = (binding.policy_id, binding.policy_version)
            policy = built.get(key) if binding.policy_id is not None else None
            if policy is None:
                try:
                    policy = expression_type(binding.policy_name or "",
                                             expression_type.validate_config(binding.policy_config or {}))
                except Exception as exc:  # a stored config that no longer validates: fail closed
                    log.warning("policy %s cannot be loaded: %s", binding.policy_name, exc)
                    outcome[binding.id] = binding.failure_result
                    continue
                if binding.policy_id is not None:
                    if len(built) > 20_000:
                        built.clear()
                    built[key] = policy
            if policy.cacheable and binding.policy_id is not None:
                # The engine's exact result cache (policy and user versions are in the key).
                cache_key = (binding.policy_id, binding.policy_version, user.id, user.version,
                             policy.cache_key(cache_request))
                cached = cache.get(cache_key)
                if cached is not None:
                    outcome[binding.id] = cached.passing != binding.negate
                    continue
                keys[binding.id] = cache_key
            batch.append((binding, policy))
        else:
            others.append(binding)
    if batch:
        # One context for all of them; the application differs per binding, so expressions that
        # read request.application see none here (documented in docs/admin/oidc.md).
        policy_request = cache_request
        timeout = max(b.timeout for b, _ in batch)
        try:
            answers: Sequence[Any] = await asyncio.wait_for(
                expression_type.passes_many([p for _, p in batch], policy_request),  # type: ignore[union-attr]
                timeout=timeout)
        except Exception as exc:
            log.warning("library policy batch failed: %s", exc)
            answers = [exc] * len(batch)
        for (binding, _), answer in zip(batch, answers):
            if isinstance(answer, PolicyResult):
                outcome[binding.id] = answer.passing != binding.negate
                if binding.id in keys:
                    cache.put(keys[binding.id], answer)
            else:
                log.warning("policy %s failed: %s", binding.policy_name, answer)
                outcome[binding.id] = binding.failure_result
    for binding in others:
        # evaluate() applies negate and, on failure, failure_result (not negated), as for flows.
        result = await policy_engine.evaluate(keystage, [binding], "all", _policy_request(keystage, None, user, request))
        outcome[binding.id] = result.passing
    return outcome


# -- authorization requests in progress ---------------------------------------------------------
#
# A provider (OIDC, ...) that needs the user to pass its authorization flow keeps the request in
# the session under an unguessable id and sends the user through the flow with
# ``next=<its continue URL>?r=<id>``. The flow's consent stage finds the request from the plan's
# redirect target and marks it granted; the provider's continue URL issues nothing for a request
# that is not marked. Each record is a dict: ``application`` (slug), ``application_name``,
# ``scopes``, ``descriptions`` (msgids), ``prompt`` (list), ``deny_url`` / ``consent_required_url``
# (where to send the user on refusal / when asking is not allowed), ``granted``.

AUTHORIZATION_REQUESTS = "authorization_requests"
MAX_PENDING = 10


def pending_authorizations(session: Any) -> dict[str, dict[str, Any]]:
    found = session.get(AUTHORIZATION_REQUESTS)
    return found if isinstance(found, dict) else {}


def add_pending_authorization(session: Any, request_id: str, record: dict[str, Any]) -> None:
    pending = pending_authorizations(session)
    while len(pending) >= MAX_PENDING:  # oldest first (dicts keep insertion order)
        pending.pop(next(iter(pending)))
    pending[request_id] = record
    session[AUTHORIZATION_REQUESTS] = pending


def pending_authorization_for(session: Any, redirect: str | None) -> tuple[str, dict[str, Any]] | None:
    """The request a flow is running for, from the flow's redirect target (``...?r=<id>``)."""
    from urllib.parse import parse_qs, urlsplit

    if not redirect:
        return None
    ids = parse_qs(urlsplit(redirect).query).get("r") or []
    pending = pending_authorizations(session)
    if len(ids) != 1 or ids[0] not in pending:
        return None
    return ids[0], pending[ids[0]]


def grant_pending_authorization(session: Any, request_id: str) -> None:
    pending = pending_authorizations(session)
    if request_id in pending:
        pending[request_id]["granted"] = True
        session[AUTHORIZATION_REQUESTS] = pending
