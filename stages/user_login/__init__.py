"""User login stage: bind the session to the user the flow has authenticated (new session id)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keystage.engine.flow_context import AUTHENTICATED_BY, PENDING_USER
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, Deny, Stage, StageConfig, StageResult

TRUE_VALUES = (True, "on", "true", "1", "yes")


class UserLoginConfig(StageConfig):
    # Offer a "stay signed in" checkbox; checked, the session lasts KEYSTAGE_REMEMBER_ME_LIFETIME.
    remember_me: bool = False


class UserLoginStage(Stage):
    type_name = "user_login"
    Config = UserLoginConfig
    template = "user_login.html"
    template_folder = Path(__file__).parent / "templates"

    config: UserLoginConfig

    async def challenge(self) -> dict[str, Any] | None:
        return {"remember_me_offered": True} if self.config.remember_me else None

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = self.ctx.plan.get(PENDING_USER)
        # Fail closed: only a user some earlier stage of this flow authenticated (or created) logs in.
        if user_id is None or not self.ctx.plan.get(AUTHENTICATED_BY):
            return Deny(self.ctx.gettext("You could not be signed in. Please start again."))
        user = await self.ctx.keystage.users.get(user_id)
        if user is None or not user.is_active:
            return Deny(self.ctx.gettext("You could not be signed in. Please start again."))
        remember = self.config.remember_me and response.get("remember_me") in TRUE_VALUES
        await self.ctx.login(user.id, remember=bool(remember))
        return Continue()


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [UserLoginStage]
