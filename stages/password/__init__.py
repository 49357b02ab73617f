"""Password stage: verify the pending user's password (Argon2id, off the event loop).

An unknown user gets the same page, the same message and the same work (a verification
against a dummy hash) as a wrong password. After ``failed_attempts_before_cancel``
failures the flow starts over.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from keystage.engine import events
from keystage.engine.authenticators import PASSKEY
from keystage.engine.flow_context import AUTHENTICATED_BY, PENDING_IDENTIFIER, PENDING_USER
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Cancel, Continue, Deny, FieldError, Invalid, Stage, StageConfig, StageResult
from keystage.engine.throttle import throttle_of

MAX_PASSWORD = 1024


class PasswordConfig(StageConfig):
    failed_attempts_before_cancel: int = pydantic.Field(default=5, ge=1, le=1000)


class PasswordStage(Stage):
    type_name = "password"
    Config = PasswordConfig
    template = "password.html"
    template_folder = Path(__file__).parent / "templates"

    config: PasswordConfig

    def _passkey_used(self) -> bool:
        # Signed in with a passkey that verified the user (identification page): no password needed.
        return PASSKEY in (self.ctx.plan.get(AUTHENTICATED_BY) or []) and self.ctx.plan.get(PENDING_USER) is not None

    async def challenge(self) -> dict[str, Any] | None:
        if self._passkey_used():
            return None
        return {"pending_identifier": self.ctx.plan.get(PENDING_IDENTIFIER) or ""}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        if self._passkey_used():
            return Continue()
        identifier = self.ctx.plan.get(PENDING_IDENTIFIER)
        user_id = self.ctx.plan.get(PENDING_USER)
        if identifier is None and user_id is None:
            return Deny(self.ctx.gettext("Please identify yourself first."))
        password = response.get("password")
        if not isinstance(password, str) or password == "":
            return Invalid({"password": [FieldError("required", self.ctx.gettext("Please enter your password."))]})
        user = await self.ctx.keystage.users.get(user_id) if user_id else None
        # Counted by what was typed, account or not: the same delays and message for everyone.
        throttle = throttle_of(self.ctx.keystage)
        attempt = await throttle.check(username=identifier or (user.username if user else None),
                                       ip=self.ctx.request.client_ip, user_id=user.id if user else None)
        if attempt.blocked:
            return Invalid({"password": [FieldError("throttled", self.ctx.gettext(
                "Too many failed attempts. Please try again later."))]})
        if await self.ctx.keystage.users.check_password(user, password[:MAX_PASSWORD]):
            await throttle.succeeded(attempt)
            self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), "password"])
            return Continue()
        await throttle.failed(attempt)
        failures = self.ctx.count_failure()
        await events.record(self.ctx.keystage, events.Event(
            "login_failed", user_id=user.id if user else None, username=identifier or (user.username if user else None),
            client_ip=self.ctx.request.client_ip, user_agent=self.ctx.request.user_agent,
            context={"stage": self.type_name, "flow": self.ctx.flow.slug, "attempt": failures},
        ))
        if failures >= self.config.failed_attempts_before_cancel:
            return Cancel(self.ctx.gettext("Too many failed attempts. Please start again."))
        return Invalid({"password": [FieldError("invalid", self.ctx.gettext(
            "The username or password is not correct."))]})


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [PasswordStage]
