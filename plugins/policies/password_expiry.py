"""Policy ``password_expiry``: fails when the user's password is older than ``max_age_days``.

With ``change_flow`` set, a failure on a stage binding sends the user through that flow's
stages (for example a prompt for a new password and a user_write) before going on;
without it, the failure denies.
"""

from __future__ import annotations

import datetime as dt

import pydantic

from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType


class PasswordExpiryConfig(PolicyConfig):
    max_age_days: int = pydantic.Field(ge=1, le=36500)
    change_flow: str | None = None


class PasswordExpiryPolicy(PolicyType):
    type_name = "password_expiry"
    Config = PasswordExpiryConfig
    config: PasswordExpiryConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        user = request.user
        if user is None:
            return PolicyResult(False, (N_("Please sign in first."),))
        changed = user.password_changed_at or user.created_at
        age = dt.datetime.now(dt.timezone.utc) - changed
        if age <= dt.timedelta(days=self.config.max_age_days):
            return PolicyResult(True)
        return PolicyResult(False, (N_("Your password has expired. Please choose a new one."),),
                            inject_flow=self.config.change_flow)


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [PasswordExpiryPolicy]
