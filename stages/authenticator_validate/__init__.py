"""Second-factor check: offers the device classes the pending user has and this stage allows
(``totp``, ``static``, ``webauthn``, or a third-party stage type's ``device_class``).

When the user has none of them, ``not_configured_action`` decides: ``skip`` (go on), ``deny``, or
``configure``: the stages of ``configuration_flow`` (a ``stage_configuration`` flow, e.g. one with an
``authenticator_totp`` stage) run here, inside this stage, and enrolling counts as the second factor.

Failed codes count against the user in the brute-force throttle (``kind="code"``); each is a
``login_failed`` event.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic

from keystage.engine import events
from keystage.engine.authenticators import PASSKEY, DeviceClass, device_classes
from keystage.engine.flow_context import AUTHENTICATED_BY, PENDING_USER, ContextKey
from keystage.engine.flows import load_flow
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, Deny, FieldError, Invalid, Stage, StageConfig, StageResult
from keystage.engine.throttle import throttle_of

# Where the configuration flow's stages stand: {"flow": slug, "index": n}.
CONFIGURING: ContextKey[dict[str, Any]] = ContextKey("authenticator_validate_configuring")


class ValidateConfig(StageConfig):
    device_classes: list[str] = pydantic.Field(default_factory=lambda: ["totp", "static", "webauthn"], min_length=1)
    # For security keys and passkeys: whether the authenticator must check a PIN or biometric.
    webauthn_user_verification: Literal["required", "preferred", "discouraged"] = "preferred"
    not_configured_action: Literal["skip", "deny", "configure"] = "skip"
    configuration_flow: str | None = None

    @pydantic.model_validator(mode="after")
    def _flow_when_configuring(self) -> ValidateConfig:
        if self.not_configured_action == "configure" and not self.configuration_flow:
            raise ValueError("not_configured_action 'configure' needs configuration_flow (a flow slug)")
        return self


class ValidateStage(Stage):
    type_name = "authenticator_validate"
    Config = ValidateConfig
    template = "authenticator_validate.html"
    template_folder = Path(__file__).parent / "templates"

    config: ValidateConfig

    async def _classes(self, user_id: int) -> dict[str, DeviceClass]:
        known = device_classes(self.ctx.keystage)
        offered = {}
        for kind in self.config.device_classes:
            device_class = known.get(kind)
            if device_class is not None and await device_class.list(self.ctx.keystage, user_id):
                offered[kind] = device_class
        return offered

    def _passkey_used(self) -> bool:
        # A passkey with user verification already was both factors.
        return PASSKEY in (self.ctx.plan.get(AUTHENTICATED_BY) or [])

    async def challenge(self) -> dict[str, Any] | None:
        user_id = self.ctx.plan.get(PENDING_USER)
        if user_id is None or self._passkey_used():
            return None
        if self.ctx.plan.get(CONFIGURING) is not None:
            return await self._configure_challenge()
        classes = await self._classes(user_id)
        if not classes:
            if self.config.not_configured_action == "configure":
                self.ctx.plan.set(CONFIGURING, {"flow": self.config.configuration_flow, "index": 0})
                return await self._configure_challenge()
            return None  # skip or deny: submit() says which
        fields: dict[str, Any] = {"device_classes": list(classes)}
        for device_class in classes.values():
            fields.update(await device_class.challenge(self.ctx, user_id, self.config))
        return fields

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = self.ctx.plan.get(PENDING_USER)
        if user_id is None:
            return Deny(self.ctx.gettext("Please identify yourself first."))
        if self._passkey_used():
            return Continue()
        if self.ctx.plan.get(CONFIGURING) is not None:
            return await self._configure_submit(response)
        classes = await self._classes(user_id)
        if not classes:
            if self.config.not_configured_action == "skip":
                return Continue()
            return Deny(self.ctx.gettext("You need a second factor to sign in. Please contact your administrator."))
        user = await self.ctx.keystage.users.get(user_id)
        if user is None:
            return Deny(self.ctx.gettext("Please identify yourself first."))
        throttle = throttle_of(self.ctx.keystage)
        attempt = await throttle.check(username=user.username, ip=self.ctx.request.client_ip, kind="code",
                                       user_id=user.id)
        if attempt.blocked:
            return Invalid({"code": [FieldError("throttled", self.ctx.gettext(
                "Too many failed attempts. Please try again later."))]})
        answered = False
        for kind, device_class in classes.items():
            result = await device_class.verify(self.ctx, user_id, response, self.config)
            if result is None:
                continue
            answered = True
            if result:
                await throttle.succeeded(attempt)
                self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), kind])
                return Continue()
        if not answered:
            await throttle.release(attempt)
            return Invalid({"code": [FieldError("required", self.ctx.gettext("Please enter the code."))]})
        await throttle.failed(attempt)
        await events.record(self.ctx.keystage, events.Event(
            "login_failed", user_id=user.id, username=user.username, client_ip=self.ctx.request.client_ip,
            user_agent=self.ctx.request.user_agent,
            context={"stage": self.type_name, "flow": self.ctx.flow.slug, "attempt": self.ctx.count_failure()},
        ))
        return Invalid({"code": [FieldError("invalid", self.ctx.gettext("The code is not correct."))]})

    # -- not_configured_action: configure ----------------------------------------------------

    async def _sub_stage(self) -> Stage | None:
        state = self.ctx.plan.get(CONFIGURING) or {}
        flow = await load_flow(self.ctx.keystage, str(state.get("flow")))
        if flow is None or flow.designation != "stage_configuration":
            return None
        bindings = list(flow.bindings)
        index = int(state.get("index", 0))
        if index >= len(bindings):
            return None
        binding = bindings[index]
        cls = self.ctx.keystage.stage_types.get(binding.stage_type)
        if cls is None or cls is type(self):
            return None
        try:
            return cls(self.ctx, cls.validate_config(binding.stage_config))
        except pydantic.ValidationError:
            return None

    async def _configure_challenge(self) -> dict[str, Any] | None:
        sub = await self._sub_stage()
        if sub is None:
            return None  # submit() denies
        fields = await sub.challenge()
        if fields is None:
            return None  # a stage that needs no input: submit() runs it
        return {**fields, "configure": sub.type_name,
                "configure_template": f"stages/{sub.type_name}/{sub.template}"}

    async def _configure_submit(self, response: Mapping[str, Any]) -> StageResult:
        sub = await self._sub_stage()
        if sub is None:
            self.ctx.plan.pop(CONFIGURING)
            return Deny(self.ctx.gettext("You need a second factor to sign in. Please contact your administrator."))
        result = await sub.submit(response)
        if not isinstance(result, Continue):
            return result
        state = dict(self.ctx.plan.get(CONFIGURING) or {})
        state["index"] = int(state.get("index", 0)) + 1
        self.ctx.plan.set(CONFIGURING, state)
        if await self._sub_stage() is not None:
            return Invalid({})  # show the configuration flow's next stage, here
        self.ctx.plan.pop(CONFIGURING)
        user_id = self.ctx.plan.get(PENDING_USER)
        # Enrolled in a flow that got this far: the new authenticator is the second factor (trust on
        # first use, which is what "configure" asks for).
        if user_id is not None and await self._classes(user_id):
            return Continue()
        return Deny(self.ctx.gettext("You need a second factor to sign in. Please contact your administrator."))


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [ValidateStage]


@hookimpl
def register_routes() -> list[Any]:
    from .settings import views

    return [views]
