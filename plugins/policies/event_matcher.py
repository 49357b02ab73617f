"""Policy ``event_matcher``: passes when the event being handled matches (for notification rules).

The event is expected in the request context under ``event`` (``{"action": ..., "client_ip": ...,
"context": {...}}``). Every configured criterion must match; none configured never matches.
"""

from __future__ import annotations

import ipaddress

from keystage.engine.hookspecs import hookimpl
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType


class EventMatcherConfig(PolicyConfig):
    action: str | None = None
    client_ip: str | None = None     # an address or a network
    username: str | None = None


class EventMatcherPolicy(PolicyType):
    type_name = "event_matcher"
    Config = EventMatcherConfig
    config: EventMatcherConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        event = request.context.get("event")
        config = self.config
        if not isinstance(event, dict) or (config.action, config.client_ip, config.username) == (None, None, None):
            return PolicyResult(False)
        if config.action is not None and event.get("action") != config.action:
            return PolicyResult(False)
        if config.username is not None and str(event.get("username") or "").casefold() != config.username.casefold():
            return PolicyResult(False)
        if config.client_ip is not None:
            try:
                if ipaddress.ip_address(str(event.get("client_ip"))) not in ipaddress.ip_network(
                        config.client_ip, strict=False):
                    return PolicyResult(False)
            except ValueError:
                return PolicyResult(False)
        return PolicyResult(True)


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [EventMatcherPolicy]
