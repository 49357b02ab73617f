"""Policy ``password``: length, character classes, not containing the username, not a common password.

It checks the password a prompt stage collected (``prompt_data[password_field]``); bind it
through a prompt stage's ``validation_policies`` so its messages appear on the field.
The common-password list is the one zxcvbn ships (about 30,000 entries): no network.
"""

from __future__ import annotations

import functools
import unicodedata

import pydantic

from keystage.engine.flow_context import PROMPT_DATA
from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType


class PasswordPolicyConfig(PolicyConfig):
    password_field: str = "password"
    min_length: int = pydantic.Field(default=8, ge=1, le=1024)
    min_uppercase: int = pydantic.Field(default=0, ge=0, le=100)
    min_lowercase: int = pydantic.Field(default=0, ge=0, le=100)
    min_digits: int = pydantic.Field(default=0, ge=0, le=100)
    min_symbols: int = pydantic.Field(default=0, ge=0, le=100)
    check_username: bool = True
    check_common: bool = True


@functools.cache
def common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    passwords = FREQUENCY_LISTS["passwords"]
    # zxcvbn keeps the list as one comma-separated string in some releases, a list in others.
    return frozenset(passwords.split(",") if isinstance(passwords, str) else passwords)


def problems(password: str, config: PasswordPolicyConfig, usernames: list[str]) -> list[str]:
    """Every rule ``password`` breaks, as message ids (translated where shown)."""
    found: list[str] = []
    if len(password) < config.min_length:
        found.append(N_("The password is too short."))
    counts = {
        "upper": sum(1 for ch in password if ch.isupper()),
        "lower": sum(1 for ch in password if ch.islower()),
        "digit": sum(1 for ch in password if ch.isdigit()),
        "symbol": sum(1 for ch in password if not ch.isalnum() and not ch.isspace()),
    }
    if counts["upper"] < config.min_uppercase:
        found.append(N_("The password needs more uppercase letters."))
    if counts["lower"] < config.min_lowercase:
        found.append(N_("The password needs more lowercase letters."))
    if counts["digit"] < config.min_digits:
        found.append(N_("The password needs more digits."))
    if counts["symbol"] < config.min_symbols:
        found.append(N_("The password needs more symbols."))
    folded = unicodedata.normalize("NFKC", password).casefold()
    if config.check_username and any(u and len(u) >= 3 and u.casefold() in folded for u in usernames):
        found.append(N_("The password may not contain your username."))
    if config.check_common and folded in common_passwords():
        found.append(N_("This password is too common. Please choose another one."))
    return found


class PasswordPolicy(PolicyType):
    type_name = "password"
    Config = PasswordPolicyConfig
    config: PasswordPolicyConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        data = request.context.get(PROMPT_DATA.name) or {}
        password = data.get(self.config.password_field)
        if not isinstance(password, str):
            return PolicyResult(False, (N_("Please enter a password."),))
        usernames = [str(data.get("username") or ""), str(data.get("email") or "").split("@")[0]]
        if request.user is not None:
            usernames += [request.user.username, (request.user.email or "").split("@")[0]]
        found = problems(password, self.config, usernames)
        return PolicyResult(not found, tuple(found))


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [PasswordPolicy]
