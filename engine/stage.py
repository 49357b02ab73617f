"""What a stage is: a class with ``challenge()`` and ``submit(response)``, and what it may see.

A stage plugin registers its classes through ``register_stage_types()``. The executor
makes one instance per request with a ``StageContext``; the instance keeps nothing
between requests: what must survive goes into the plan context (``ctx.plan``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

if TYPE_CHECKING:
    from .flow_context import PlanContext
    from .request_info import RequestInfo
    from .runtime import Keystage
    from .sessions import Session


class StageConfig(pydantic.BaseModel):
    """Base of every stage's config model: unknown keys are errors, not silently dropped."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class FieldError:
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclasses.dataclass(frozen=True)
class Continue:
    """The stage is done; go on with the next one."""


@dataclasses.dataclass(frozen=True)
class Invalid:
    """The response was not acceptable: show the challenge again with these errors
    (or restart the flow, as the binding's ``invalid_response_action`` says)."""

    errors: Mapping[str, list[FieldError]]


@dataclasses.dataclass(frozen=True)
class Deny:
    """Stop the flow with an access-denied message (already translated)."""

    message: str


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Stop the flow and start it over, with a message for the next challenge."""

    message: str


@dataclasses.dataclass(frozen=True)
class Redirect:
    """End the flow by sending the user to ``to`` (an admin-configured URL)."""

    to: str


StageResult = Continue | Invalid | Deny | Cancel | Redirect


@dataclasses.dataclass
class FlowInfo:
    slug: str
    title: str
    designation: str


class StageContext:
    """Everything a stage may use for one request. Built by the executor."""

    def __init__(
        self,
        *,
        keystage: Keystage,
        plan: PlanContext,
        request: RequestInfo,
        session: Session,
        flow: FlowInfo,
        translations: Any,
        login: Any,
        logout: Any,
        binding_id: int = 0,
    ) -> None:
        self.keystage = keystage
        self.plan = plan
        self.request = request
        self.session = session
        self.flow = flow
        self._translations = translations
        self._login = login
        self._logout = logout
        self.binding_id = binding_id

    def gettext(self, message: str, **variables: Any) -> str:
        text = self._translations.gettext(message)
        return text % variables if variables else text

    def ngettext(self, singular: str, plural: str, n: int, **variables: Any) -> str:
        text = self._translations.ngettext(singular, plural, n)
        return text % {"num": n, **variables}

    def pgettext(self, context: str, message: str) -> str:
        return self._translations.pgettext(context, message)

    def count_failure(self) -> int:
        """Count a failed attempt at this stage binding in the plan; returns the new count."""
        from .flow_context import FAILED_ATTEMPTS

        counts = dict(self.plan.get(FAILED_ATTEMPTS) or {})
        key = str(self.binding_id)
        counts[key] = counts.get(key, 0) + 1
        self.plan.set(FAILED_ATTEMPTS, counts)
        return counts[key]

    async def login(self, user_id: int, *, remember: bool = False) -> None:
        """Bind the session to ``user_id`` (a new session id: no fixation)."""
        await self._login(user_id, remember=remember)

    async def logout(self) -> None:
        await self._logout()


class Stage:
    """Base class of stage types.

    Subclasses set ``type_name`` (unique, used in configuration and as the JSON
    challenge's ``component``), ``Config`` (a ``StageConfig`` model), and ``template``
    (file name in ``template_folder``, rendered for the HTML face with the challenge's
    fields, ``errors``, ``csrf_token``, ``flow`` and ``_`` in scope).
    """

    type_name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    template: ClassVar[str] = ""
    template_folder: ClassVar[Path | None] = None
    # Whether the stage is usable without JavaScript in the HTML face.
    needs_javascript: ClassVar[bool] = False

    def __init__(self, ctx: StageContext, config: StageConfig) -> None:
        self.ctx = ctx
        self.config = config

    async def challenge(self) -> dict[str, Any] | None:
        """Fields of the challenge (JSON-serialisable), besides ``component`` and ``flow``.

        ``None`` means the stage needs no input: the executor calls ``submit({})`` at once.
        """
        return None

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        """Handle the client's response; ``response`` is untrusted input."""
        return Continue()

    @classmethod
    def validate_config(cls, raw: Mapping[str, Any]) -> StageConfig:
        """Validate ``raw``; raises ``pydantic.ValidationError`` with field locations."""
        return cls.Config.model_validate(dict(raw))


def config_errors(exc: pydantic.ValidationError) -> list[str]:
    """``["field.sub: message", ...]`` from a pydantic error, for admin-facing messages."""
    out = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(config)"
        out.append(f"{where}: {error['msg']}")
    return out
