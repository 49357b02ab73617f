"""Policy ``expression``: an admin-written Python function body, run in the sandbox.

Config::

    expression: |
      if is_group_member(request.user, "staff"):
          return True
      message("Only staff may use this application.")
      return False
    timeout: 1.0        # seconds, at most keystage.engine.sandbox.MAX_TIMEOUT

The expression is compiled when the policy is saved or applied (a blueprint, the admin
API): an error there carries its line and column. At evaluation, anything but ``True``
or ``False`` is an error, and an error is a failure of the binding (``failure_result``).
See docs/expressions.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pydantic

from keystage.engine import sandbox
from keystage.engine.hookspecs import hookimpl
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType
from keystage.engine.sandbox.context import policy_context, user_loader


class ExpressionConfig(PolicyConfig):
    expression: str
    timeout: float = pydantic.Field(default=sandbox.DEFAULT_TIMEOUT, gt=0, le=sandbox.MAX_TIMEOUT)

    @pydantic.field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            sandbox.check(value)
        except sandbox.ExpressionError as exc:
            raise ValueError(exc.describe()) from None
        return value


class ExpressionPolicy(PolicyType):
    type_name = "expression"
    Config = ExpressionConfig
    # Off for the type; each instance says whether *its* expression may be cached (no
    # clock, no other users, no plugin helper, and every request field it reads known).
    cacheable = False

    def __init__(self, name: str, config: PolicyConfig) -> None:
        super().__init__(name, config)
        assert isinstance(config, ExpressionConfig)
        self.compiled = sandbox.compile_expression(config.expression)
        self.cacheable = self.compiled.pure  # type: ignore[misc]

    def cache_key(self, request: PolicyRequest) -> tuple[Any, ...]:
        """The request fields this expression reads (the user is part of the engine's key)."""
        attrs = self.compiled.request_attrs or frozenset()
        info = request.request
        parts: list[Any] = []
        if "ip" in attrs:
            parts.append(info.client_ip if info else None)
        if "user_agent" in attrs:
            parts.append(info.user_agent if info else None)
        if "headers" in attrs:
            parts.append(tuple(sorted(info.headers.items())) if info else ())
        if "context" in attrs:
            parts.append(json.dumps(request.context, sort_keys=True, default=str))
        if "flow" in attrs:
            flow = getattr(request, "flow", None)
            parts.append((getattr(flow, "slug", None), getattr(flow, "designation", None)))
        if "application" in attrs:
            parts.append(repr(getattr(request, "application", None)) + str(request.context.get("application")))
        return tuple(parts)

    async def evaluate(self, request: PolicyRequest) -> sandbox.EvaluationResult:
        """Run the expression for ``request``; ``ExpressionError`` on any failure."""
        config = self.config
        assert isinstance(config, ExpressionConfig)
        pool = sandbox.get_sandbox(request.keystage)
        context = await policy_context(request, self.compiled, pool.helper_names)
        return await pool.evaluate(config.expression, context=context, timeout=config.timeout,
                                   kind="policy", user_loader=user_loader(request.keystage))

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        result = await self.evaluate(request)
        return PolicyResult(bool(result.value), result.messages)

    @staticmethod
    async def passes_many(policies: Sequence[ExpressionPolicy],
                          request: PolicyRequest) -> list[PolicyResult | sandbox.ExpressionError]:
        """Many expression policies for one request, in one round trip per sandbox worker.

        For checking many targets at once (the application library: which of 1,000 apps may
        this user open?). One context serves all; the timeout is the largest of theirs. Each
        answer is a ``PolicyResult`` or the ``ExpressionError`` of that policy (a failure:
        apply the binding's ``failure_result``).
        """
        if not policies:
            return []
        pool = sandbox.get_sandbox(request.keystage)
        context = await policy_context(request, [p.compiled for p in policies], pool.helper_names)
        timeout = max(p.config.timeout for p in policies)  # type: ignore[attr-defined]
        results = await pool.evaluate_many([(p.config.expression, context) for p in policies],  # type: ignore[attr-defined]
                                           timeout=timeout, kind="policy", user_loader=user_loader(request.keystage))
        return [r if isinstance(r, sandbox.ExpressionError) else PolicyResult(bool(r.value), r.messages)
                for r in results]


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [ExpressionPolicy]
