"""What a policy type is. Policy plugins subclass ``PolicyType``; bindings decide where it applies."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic

if TYPE_CHECKING:
    from .request_info import RequestInfo
    from .runtime import Keystage
    from .users import User


class PolicyConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class PolicyResult:
    passing: bool
    messages: tuple[str, ...] = ()
    # On a failing stage binding: run this flow's stages in place of the skipped one
    # (e.g. password expiry sends the user through a password change, then goes on).
    inject_flow: str | None = None


@dataclasses.dataclass
class PolicyRequest:
    """What a policy sees: the user in question (or None), the request, the flow context."""

    keystage: Keystage
    user: User | None
    request: RequestInfo | None
    context: dict[str, Any]
    # The flow being run ({"slug", "designation"}) and the application it is for, when known.
    flow: dict[str, Any] | None = None
    application: dict[str, Any] | None = None


class PolicyType:
    type_name: ClassVar[str]
    Config: ClassVar[type[PolicyConfig]] = PolicyConfig
    # Whether a result may be reused for the same (policy version, user version, request
    # data the policy depends on). Policies reading time or counters must say False.
    cacheable: ClassVar[bool] = False

    def cache_key(self, request: PolicyRequest) -> tuple[Any, ...]:
        """The request data this policy's answer depends on (besides the user), for caching."""
        return ()

    def __init__(self, name: str, config: PolicyConfig) -> None:
        self.name = name
        self.config = config

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        raise NotImplementedError  # every policy type defines its own test

    @classmethod
    def validate_config(cls, raw: dict[str, Any]) -> PolicyConfig:
        return cls.Config.model_validate(dict(raw))
