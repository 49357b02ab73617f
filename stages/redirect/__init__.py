"""Redirect stage: end the flow by sending the user to a URL or to another flow, set by the admin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pydantic

from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Redirect, Stage, StageConfig, StageResult


class RedirectConfig(StageConfig):
    to: str | None = None          # an absolute http(s) URL or a path
    flow: str | None = None        # or the slug of a flow to continue in

    @pydantic.model_validator(mode="after")
    def _one_target(self) -> "RedirectConfig":
        if (self.to is None) == (self.flow is None):
            raise ValueError("set exactly one of 'to' and 'flow'")
        if self.to is not None:
            parts = urlsplit(self.to)
            if not (parts.scheme in ("http", "https") and parts.netloc) and not self.to.startswith("/"):
                raise ValueError("'to' must be an http(s) URL or a path starting with /")
        return self


class RedirectStage(Stage):
    type_name = "redirect"
    Config = RedirectConfig

    config: RedirectConfig

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        return Redirect(self.config.to if self.config.to else f"/flows/{self.config.flow}/")


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [RedirectStage]
