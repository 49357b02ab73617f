"""User logout stage: end the session (deleted from the store, cookie cleared)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, Stage, StageConfig, StageResult


class UserLogoutStage(Stage):
    type_name = "user_logout"
    Config = StageConfig

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        await self.ctx.logout()
        return Continue()


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [UserLogoutStage]
