"""Identification stage: who is logging in (username or email), optionally with the password on the same page.

Never reveals whether an account exists: an unknown identifier goes on to the next stage
exactly like a known one, and with the password on this page the check costs the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic

from keystage.engine import events
from keystage.engine.authenticators import device_classes
from keystage.engine.flow_context import AUTHENTICATED_BY, LOGIN_HINT, PENDING_IDENTIFIER, PENDING_USER
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, FieldError, Invalid, Stage, StageConfig, StageResult
from keystage.engine.throttle import throttle_of

MAX_IDENTIFIER = 254


class IdentificationConfig(StageConfig):
    user_fields: list[Literal["username", "email"]] = pydantic.Field(
        default_factory=lambda: ["username", "email"], min_length=1)
    show_password: bool = False
    enrollment_flow: str | None = None
    recovery_flow: str | None = None
    # Offer passkeys in the username field (WebAuthn conditional mediation, where the browser can).
    passkey_login: bool = False


class IdentificationStage(Stage):
    type_name = "identification"
    Config = IdentificationConfig
    template = "identification.html"
    template_folder = Path(__file__).parent / "templates"

    config: IdentificationConfig

    def _label(self) -> str:
        fields = self.config.user_fields
        if fields == ["email"]:
            return self.ctx.gettext("Email address")
        if fields == ["username"]:
            return self.ctx.gettext("Username")
        return self.ctx.gettext("Username or email address")

    def _missing(self) -> str:
        # Whole sentences per case: a label spliced into a sentence cannot be translated well.
        fields = self.config.user_fields
        if fields == ["email"]:
            return self.ctx.gettext("Please enter your email address.")
        if fields == ["username"]:
            return self.ctx.gettext("Please enter your username.")
        return self.ctx.gettext("Please enter your username or email address.")

    async def challenge(self) -> dict[str, Any]:
        return {
            "user_fields": list(self.config.user_fields),
            "uid_label": self._label(),
            "password_fields": self.config.show_password,
            "enroll_url": f"/flows/{self.config.enrollment_flow}/" if self.config.enrollment_flow else None,
            "recovery_url": f"/flows/{self.config.recovery_flow}/" if self.config.recovery_flow else None,
            "pending_identifier": self.ctx.plan.get(PENDING_IDENTIFIER) or self.ctx.plan.get(LOGIN_HINT) or "",
            **(await self._passkey_challenge()),
        }

    async def _passkey_challenge(self) -> dict[str, Any]:
        webauthn = device_classes(self.ctx.keystage).get("webauthn") if self.config.passkey_login else None
        return await webauthn.login_challenge(self.ctx) if webauthn is not None else {}  # type: ignore[attr-defined]

    async def _passkey(self, raw: Any) -> StageResult:
        webauthn = device_classes(self.ctx.keystage).get("webauthn")
        user_id = await webauthn.login(self.ctx, raw) if webauthn is not None else None  # type: ignore[attr-defined]
        user = await self.ctx.keystage.users.get(user_id) if user_id else None
        if user is None or not user.is_active:
            return Invalid({"uid_field": [FieldError("invalid", self.ctx.gettext(
                "The security key or passkey was not accepted."))]})
        self.ctx.plan.set(PENDING_IDENTIFIER, user.username)
        self.ctx.plan.set(PENDING_USER, user.id)
        return Continue()

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        if self.config.passkey_login and response.get("passkey"):
            return await self._passkey(response["passkey"])
        uid = response.get("uid_field")
        if not isinstance(uid, str) or not uid.strip():
            return Invalid({"uid_field": [FieldError("required", self._missing())]})
        uid = uid.strip()[:MAX_IDENTIFIER]
        user = await self.ctx.keystage.users.find(uid, fields=tuple(self.config.user_fields))
        known = user is not None and user.is_active
        self.ctx.plan.set(PENDING_IDENTIFIER, uid)
        if known:
            assert user is not None
            self.ctx.plan.set(PENDING_USER, user.id)
        else:
            self.ctx.plan.pop(PENDING_USER)
        if not self.config.show_password:
            return Continue()
        password = response.get("password")
        if not isinstance(password, str) or password == "":
            return Invalid({"password": [FieldError("required", self.ctx.gettext("Please enter your password."))]})
        throttle = throttle_of(self.ctx.keystage)
        attempt = await throttle.check(username=uid, ip=self.ctx.request.client_ip,
                                       user_id=user.id if known and user else None)
        if attempt.blocked:
            return Invalid({"password": [FieldError("throttled", self.ctx.gettext(
                "Too many failed attempts. Please try again later."))]})
        if await self.ctx.keystage.users.check_password(user if known else None, password):
            await throttle.succeeded(attempt)
            self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), "password"])
            return Continue()
        await throttle.failed(attempt)
        self.ctx.count_failure()
        await events.record(self.ctx.keystage, events.Event(
            "login_failed", user_id=user.id if known and user else None, username=uid,
            client_ip=self.ctx.request.client_ip, user_agent=self.ctx.request.user_agent,
            context={"stage": self.type_name, "flow": self.ctx.flow.slug},
        ))
        return Invalid({"password": [FieldError("invalid", self.ctx.gettext(
            "The username or password is not correct."))]})


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [IdentificationStage]
