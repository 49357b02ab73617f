"""The attributes an assertion carries: defaults (username, name, email, groups) and the
provider's attribute mappings (expressions; a list is several values, None leaves it out)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keystage.engine import N_, mappings
from keystage.engine.sandbox.context import group_names

if TYPE_CHECKING:
    from keystage.engine.request_info import RequestInfo
    from keystage.engine.runtime import Keystage
    from keystage.engine.users import User

    from .config import SAMLConfig

# What the consent page says the application gets (the same words OIDC scopes use).
DESCRIPTIONS = {
    "saml:subject": N_("Know who you are"),
    "saml:profile": N_("See your name and username"),
    "saml:email": N_("See your email address"),
    "saml:groups": N_("See the groups you belong to"),
}


def consent_scopes(config: SAMLConfig) -> list[str]:
    """What a consent for this provider covers: asked again when the provider starts sending more."""
    scopes = ["saml:subject"]
    if config.default_attributes:
        scopes += ["saml:profile", "saml:email", "saml:groups"]
    scopes += [f"saml:attribute:{name}" for name in sorted(config.attribute_mappings)]
    return scopes


def _values(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(v) for v in value if v is not None]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return [str(value)]


async def user_attributes(keystage: Keystage, user: User, config: SAMLConfig, provider_name: str,
                          request: RequestInfo | None = None) -> dict[str, list[str]]:
    attributes: dict[str, list[str]] = {}
    if config.default_attributes:
        attributes["username"] = [user.username]
        attributes["name"] = [user.display_name or user.username]
        if user.email:
            attributes["email"] = [user.email]
        attributes["groups"] = sorted(await group_names(keystage, user))
    for name, source in config.attribute_mappings.items():
        value = await mappings.evaluate_mapping(keystage, source, user, request,
                                                label={"provider": provider_name, "attribute": name}, kind="value")
        if value is mappings.FAILED:
            attributes.pop(name, None)  # never a default that the admin meant to replace
            continue
        values = _values(value)
        if values is None:
            attributes.pop(name, None)
        else:
            attributes[name] = values
    return {name: values for name, values in attributes.items() if values}
