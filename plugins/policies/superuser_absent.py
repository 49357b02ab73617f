"""Policy ``superuser_absent``: passes while no active superuser exists (guards the initial-setup flow)."""

from __future__ import annotations

from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.policy import PolicyRequest, PolicyResult, PolicyType


class SuperuserAbsentPolicy(PolicyType):
    type_name = "superuser_absent"

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        exists = await request.keystage.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users WHERE is_superuser AND is_active)"
        )
        if exists:
            return PolicyResult(False, (N_("keystage is already set up."),))
        return PolicyResult(True)


@hookimpl
def register_policy_types() -> list[type[PolicyType]]:
    return [SuperuserAbsentPolicy]
