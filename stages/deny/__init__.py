"""Deny stage: stop the flow with an access-denied message (bind policies to decide who reaches it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Deny, Stage, StageConfig, StageResult


class DenyConfig(StageConfig):
    message: str | None = None


class DenyStage(Stage):
    type_name = "deny"
    Config = DenyConfig

    config: DenyConfig

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        if self.config.message:
            return Deny(self.ctx.gettext(self.config.message))
        return Deny(self.ctx.gettext("You are not allowed to continue."))


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [DenyStage]
