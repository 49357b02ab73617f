"""Prompt stage: ask for the fields an admin configured (text, email, password, password repeat,
checkbox, hidden), validate them, and keep them in the plan context for later stages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic

from keystage.engine.flow_context import PROMPT_DATA
from keystage.engine.hookspecs import hookimpl
from keystage.engine.stage import Continue, FieldError, Invalid, Stage, StageConfig, StageResult
from keystage.engine.users import UserError, validate_email

FieldType = Literal["text", "email", "password", "password_repeat", "checkbox", "hidden"]
AUTOCOMPLETE = {"username": "username", "email": "email", "name": "name", "display_name": "name"}
TRUE_VALUES = (True, "on", "true", "1", "yes")


class PromptField(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    field_key: str = pydantic.Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    label: str = pydantic.Field(min_length=1, max_length=200)
    type: FieldType = "text"
    required: bool = False
    placeholder: str = ""
    initial_value: str = ""
    max_length: int = pydantic.Field(default=255, ge=1, le=10000)


class PromptConfig(StageConfig):
    fields: list[PromptField] = pydantic.Field(min_length=1)
    # Names of policies (e.g. type password) that must pass for the answers to be accepted;
    # their messages are shown on the password field, or above the form.
    validation_policies: list[str] = pydantic.Field(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "PromptConfig":
        keys = [f.field_key for f in self.fields]
        if len(keys) != len(set(keys)):
            raise ValueError("field_key values must be unique")
        if any(f.type == "password_repeat" for f in self.fields) and not any(f.type == "password" for f in self.fields):
            raise ValueError("a password_repeat field needs a password field in the same stage")
        return self


class PromptStage(Stage):
    type_name = "prompt"
    Config = PromptConfig
    template = "prompt.html"
    template_folder = Path(__file__).parent / "templates"

    config: PromptConfig

    def _autocomplete(self, field: PromptField) -> str:
        if field.type in ("password", "password_repeat"):
            return "new-password"
        return AUTOCOMPLETE.get(field.field_key, "off")

    async def challenge(self) -> dict[str, Any]:
        previous = self.ctx.plan.get(PROMPT_DATA) or {}
        return {"fields": [
            {
                "field_key": f.field_key, "label": self.ctx.gettext(f.label), "type": f.type, "required": f.required,
                "placeholder": self.ctx.gettext(f.placeholder) if f.placeholder else "",
                "initial_value": previous.get(f.field_key, f.initial_value)
                if f.type not in ("password", "password_repeat", "hidden") else
                (f.initial_value if f.type == "hidden" else ""),
                "autocomplete": self._autocomplete(f),
            }
            for f in self.config.fields
        ]}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        errors: dict[str, list[FieldError]] = {}
        values: dict[str, Any] = {}
        password: str | None = None
        for field in self.config.fields:
            raw = response.get(field.field_key)
            if field.type == "hidden":
                values[field.field_key] = field.initial_value  # never trust the client with it
                continue
            if field.type == "checkbox":
                values[field.field_key] = raw in TRUE_VALUES
                if field.required and not values[field.field_key]:
                    errors[field.field_key] = [FieldError("required", self.ctx.gettext("Please tick this box."))]
                continue
            value = raw.strip() if isinstance(raw, str) and field.type not in ("password", "password_repeat") \
                else raw if isinstance(raw, str) else ""
            if value == "":
                if field.required:
                    errors[field.field_key] = [FieldError("required", self.ctx.gettext("This field is required."))]
                continue
            if len(value) > field.max_length:
                errors[field.field_key] = [FieldError("too_long", self.ctx.ngettext(
                    "Please use at most %(num)d character.", "Please use at most %(num)d characters.",
                    field.max_length))]
                continue
            if field.type == "email":
                try:
                    value = validate_email(value)
                except UserError:
                    errors[field.field_key] = [FieldError("invalid", self.ctx.gettext(
                        "Please enter a valid email address."))]
                    continue
            if field.type == "password":
                password = value
            if field.type == "password_repeat":
                continue
            if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value):
                errors[field.field_key] = [FieldError("invalid", self.ctx.gettext("Please remove control characters."))]
                continue
            values[field.field_key] = value
        for field in self.config.fields:
            if field.type == "password_repeat" and field.field_key not in errors:
                if response.get(field.field_key) != password:
                    errors[field.field_key] = [FieldError("mismatch", self.ctx.gettext("The passwords do not match."))]
        if errors:
            return Invalid(errors)
        merged = {**(self.ctx.plan.get(PROMPT_DATA) or {}), **values}
        if self.config.validation_policies:
            messages = await self._validate(merged)
            if messages:
                target = next((f.field_key for f in self.config.fields if f.type == "password"), "non_field_errors")
                return Invalid({target: [FieldError("policy", m) for m in messages]})
        self.ctx.plan.set(PROMPT_DATA, merged)
        return Continue()

    async def _validate(self, data: dict[str, Any]) -> list[str]:
        """Run the validation policies on the answers; the messages of those that fail."""
        from keystage.engine import policy_engine
        from keystage.engine.flow_context import PENDING_USER
        from keystage.engine.policy import PolicyRequest

        keystage = self.ctx.keystage
        bindings = await policy_engine.bindings_for_policies(keystage, self.config.validation_policies)
        user_id = self.ctx.plan.get(PENDING_USER)
        user = await keystage.users.get(user_id) if user_id else None
        context = {**self.ctx.plan.data, PROMPT_DATA.name: data}
        result = await policy_engine.evaluate(keystage, bindings, "all",
                                              PolicyRequest(keystage, user, self.ctx.request, context,
                                                            flow={"slug": self.ctx.flow.slug,
                                                                  "designation": self.ctx.flow.designation}))
        if result.passing:
            return []
        return [self.ctx.gettext(m) for m in result.messages] or [
            self.ctx.gettext("These answers are not accepted.")]


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [PromptStage]
