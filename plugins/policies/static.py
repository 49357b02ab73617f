"""Policy ``static``: always the configured result. Closes a flow (``passing: false``) until an
admin removes the binding, or stands in while a real policy is being written."""

from __future__ import annotations

from keystage.engine.hookspecs import hookimpl
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType


class StaticConfig(PolicyConfig):
    passing: bool
    message: str | None = None


class StaticPolicy(PolicyType):
    type_name = "static"
    Config = StaticConfig
    cacheable = True
    config: StaticConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        return PolicyResult(self.config.passing, (self.config.message,) if self.config.message else ())


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [StaticPolicy]
