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

    async def evaluate(self, request: PolicyRequest) -> sandbox.EvaluationResult:
        """Run the expression for ``request``; ``ExpressionError`` on any failure."""
        config = self.config
        assert isinstance(config, ExpressionConfig)
        pool = sandbox.get_sandbox(request.keystage)
        compiled = sandbox.compile_expression(config.expression)
        context = await policy_context(request, compiled, pool.helper_names)
        return await pool.evaluate(config.expression, context=context, timeout=config.timeout,
                                   kind="policy", user_loader=user_loader(request.keystage))

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        result = await self.evaluate(request)
        return PolicyResult(bool(result.value), result.messages)


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [ExpressionPolicy]
