"""The planner: (flow, request) → a plan, the stage bindings that apply plus a context.

Plans are versioned JSON, kept in the server-side session (never pickled, never in a
cookie), so any worker can continue any flow. ``Plan.from_json`` refuses anything it does
not fully understand, and the executor then restarts the flow cleanly.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from . import policy_engine
from .flow_context import PENDING_USER, REDIRECT
from .policy import PolicyRequest, PolicyResult

if TYPE_CHECKING:
    from .flows import Flow
    from .request_info import RequestInfo
    from .runtime import Keystage
    from .users import User

PLAN_VERSION = 1


class PlanError(ValueError):
    """A stored plan cannot be used (old version, corrupt)."""


@dataclasses.dataclass
class PlannedStage:
    binding_id: int
    stage_id: int
    stage_type: str
    config: dict[str, Any]
    re_evaluate_policies: bool
    invalid_response_action: str

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Plan:
    flow_slug: str
    flow_id: int
    stages: list[PlannedStage]
    context: dict[str, Any]
    index: int = 0
    created_at: float = dataclasses.field(default_factory=time.time)

    @property
    def current(self) -> PlannedStage | None:
        return self.stages[self.index] if self.index < len(self.stages) else None

    def as_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION, "flow_slug": self.flow_slug, "flow_id": self.flow_id,
            "stages": [s.as_json() for s in self.stages], "context": self.context,
            "index": self.index, "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        try:
            if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
                raise PlanError("unknown plan version")
            stages = [PlannedStage(**s) for s in data["stages"]]
            plan = cls(str(data["flow_slug"]), int(data["flow_id"]), stages, dict(data["context"]),
                       int(data["index"]), float(data["created_at"]))
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"corrupt plan: {exc}") from None
        if not 0 <= plan.index <= len(plan.stages) or not all(isinstance(s.config, dict) for s in stages):
            raise PlanError("corrupt plan: bad index or stage")
        return plan


@dataclasses.dataclass(frozen=True)
class Denied:
    result: PolicyResult


async def plan(
    keystage: Keystage, flow: Flow, *, user: User | None, request: RequestInfo | None,
    redirect: str | None = None, context: dict[str, Any] | None = None,
) -> Plan | Denied:
    """Evaluate the flow's bindings, then those of each stage binding marked ``evaluate_on_plan``.

    One database query fetches every policy binding involved.
    """
    ctx: dict[str, Any] = dict(context or {})
    if redirect:
        ctx[REDIRECT.name] = redirect
    if user is not None:
        ctx.setdefault(PENDING_USER.name, user.id)
    policy_request = PolicyRequest(keystage=keystage, user=user, request=request, context=ctx,
                                   flow={"slug": flow.slug, "designation": flow.designation})
    bindings = await policy_engine.bindings_for(
        keystage, flow_id=flow.id, stage_binding_ids=[b.id for b in flow.bindings if b.evaluate_on_plan]
    )
    flow_result = await policy_engine.evaluate(
        keystage, bindings.get(("flow", flow.id), []), flow.policy_engine_mode, policy_request
    )
    if not flow_result.passing:
        return Denied(flow_result)
    stages = []
    for binding in flow.bindings:
        if binding.evaluate_on_plan:
            result = await policy_engine.evaluate(
                keystage, bindings.get(("stage_binding", binding.id), []), flow.policy_engine_mode, policy_request
            )
            if not result.passing:
                continue
        stages.append(PlannedStage(
            binding_id=binding.id, stage_id=binding.stage_id, stage_type=binding.stage_type,
            config=binding.stage_config, re_evaluate_policies=binding.re_evaluate_policies,
            invalid_response_action=binding.invalid_response_action,
        ))
    return Plan(flow.slug, flow.id, stages, ctx)
