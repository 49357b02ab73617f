"""The terms-of-service stage: the user accepts a version of the terms once; keystage remembers it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from keystage.engine import (AUTHENTICATED_BY, PENDING_USER, Continue, Deny, Event, FieldError, Invalid, Stage,
                             StageConfig, StageResult, record_event)

CHECKED = (True, "on", "true", "1", "yes")


class TermsConfig(StageConfig):
    """What an admin sets on a stage of type ``terms`` (unknown keys are refused)."""

    # Bump it when the terms change: everyone is asked again.
    version: str = pydantic.Field(min_length=1, max_length=64)
    url: pydantic.AnyHttpUrl


class TermsStage(Stage):
    type_name = "terms"  # the JSON challenge's component and the admin's stage type
    Config = TermsConfig
    template = "terms.html"
    template_folder = Path(__file__).parent / "templates"

    config: TermsConfig

    async def _already_accepted(self, user_id: int) -> bool:
        return bool(await self.ctx.keystage.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM terms_acceptances WHERE user_id = $1 AND version = $2)",
            user_id, self.config.version,
        ))

    async def challenge(self) -> dict[str, Any] | None:
        user_id = self.ctx.plan.get(PENDING_USER)
        if user_id is not None and self.ctx.plan.get(AUTHENTICATED_BY) and await self._already_accepted(user_id):
            return None  # nothing to ask: the executor calls submit({}) and goes on
        return {"terms_version": self.config.version, "terms_url": str(self.config.url)}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = self.ctx.plan.get(PENDING_USER)
        # Fail closed: only a user an earlier stage authenticated can accept anything.
        if user_id is None or not self.ctx.plan.get(AUTHENTICATED_BY):
            return Deny(self.ctx.gettext("Please sign in before you accept the terms of service."))
        if await self._already_accepted(user_id):
            return Continue()
        if response.get("accept") not in CHECKED:
            return Invalid({"accept": [FieldError(
                "required", self.ctx.gettext("Please accept the terms of service to continue."))]})
        await self.ctx.keystage.pool.execute(
            """INSERT INTO terms_acceptances (user_id, version, client_ip) VALUES ($1, $2, $3::inet)
               ON CONFLICT (user_id, version) DO NOTHING""",
            user_id, self.config.version, self.ctx.request.client_ip,
        )
        await record_event(self.ctx.keystage, Event(
            "terms_accepted", user_id=user_id, client_ip=self.ctx.request.client_ip,
            user_agent=self.ctx.request.user_agent, context={"version": self.config.version},
        ))
        return Continue()
