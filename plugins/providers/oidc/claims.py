"""Claims per scope (OpenID Connect Core 5.4) and admin property mappings (expressions returning dicts)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from keystage.engine import N_, events, sandbox
from keystage.engine.policy import PolicyRequest
from keystage.engine.sandbox.context import group_names, policy_context, user_loader

if TYPE_CHECKING:
    from keystage.engine.request_info import RequestInfo
    from keystage.engine.runtime import Keystage
    from keystage.engine.users import User

    from .config import OIDCConfig

log = logging.getLogger("keystage.oidc")

# What the consent page says each scope gives the application.
SCOPE_DESCRIPTIONS = {
    "openid": N_("Know who you are"),
    "profile": N_("See your name and username"),
    "email": N_("See your email address"),
    "groups": N_("See the groups you belong to"),
    "offline_access": N_("Keep access while you are away"),
}
# Claims the protocol sets; a property mapping cannot replace them.
PROTECTED = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "nonce", "auth_time", "azp", "at_hash", "jti",
                       "scope", "client_id"})


async def user_claims(keystage: Keystage, user: User, scopes: list[str], config: OIDCConfig,
                      request: RequestInfo | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if "profile" in scopes:
        claims["name"] = user.display_name or user.username
        claims["preferred_username"] = user.username
        if user.preferred_locale:
            claims["locale"] = user.preferred_locale.replace("_", "-")
    if "email" in scopes and user.email:
        claims["email"] = user.email
        claims["email_verified"] = bool(user.attributes.get("email_verified", False))
    if "groups" in scopes:
        claims["groups"] = sorted(await group_names(keystage, user))
    for scope in scopes:
        source = config.property_mappings.get(scope)
        if source:
            claims.update(await _mapped(keystage, scope, source, user, request))
    return claims


async def _mapped(keystage: Keystage, scope: str, source: str, user: User,
                  request: RequestInfo | None) -> dict[str, Any]:
    pool = sandbox.get_sandbox(keystage)
    policy_request = PolicyRequest(keystage, user, request, {})
    try:
        context = await policy_context(policy_request, sandbox.compile_expression(source), pool.helper_names)
        result = await pool.evaluate(source, context=context, kind="mapping", user_loader=user_loader(keystage))
    except sandbox.ExpressionError as exc:
        # A broken mapping leaves its claims out (never a half-made claim) and is recorded for the admin.
        log.warning("property mapping for scope %s failed: %s", scope, exc)
        await events.record(keystage, events.Event(
            "property_mapping_exception", user_id=user.id, username=user.username,
            context={"scope": scope, "reason": str(exc), "line": getattr(exc, "line", None)}))
        return {}
    return {k: v for k, v in dict(result.value).items() if k not in PROTECTED}
