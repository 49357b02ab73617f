"""Claims per scope (OpenID Connect Core 5.4) and admin property mappings (expressions returning dicts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keystage.engine import N_, mappings
from keystage.engine.sandbox.context import group_names

if TYPE_CHECKING:
    from keystage.engine.request_info import RequestInfo
    from keystage.engine.runtime import Keystage
    from keystage.engine.users import User

    from .config import OIDCConfig

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
    value = await mappings.evaluate_mapping(keystage, source, user, request, label={"scope": scope})
    if value is mappings.FAILED:
        return {}
    return {k: v for k, v in dict(value).items() if k not in PROTECTED}
