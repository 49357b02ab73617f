"""Reading flows and their stage bindings from the database."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Keystage

DESIGNATIONS = ("authentication", "authorization", "enrollment", "invalidation", "recovery",
                "stage_configuration", "unenrollment")


@dataclasses.dataclass(frozen=True)
class StageBinding:
    id: int
    order: int
    stage_id: int
    stage_name: str
    stage_type: str
    stage_config: dict[str, Any]
    evaluate_on_plan: bool
    re_evaluate_policies: bool
    invalid_response_action: str


@dataclasses.dataclass(frozen=True)
class Flow:
    id: int
    slug: str
    name: str
    title: str
    designation: str
    policy_engine_mode: str
    denied_action: str
    bindings: tuple[StageBinding, ...]


async def load_flow(keystage: Keystage, slug: str) -> Flow | None:
    """The flow and its stage bindings in order, in one query; ``None`` if no such flow."""
    rows = await keystage.pool.fetch(
        """SELECT f.id, f.slug, f.name, f.title, f.designation, f.policy_engine_mode, f.denied_action,
                  b.id AS binding_id, b."order", b.evaluate_on_plan, b.re_evaluate_policies,
                  b.invalid_response_action, s.id AS stage_id, s.name AS stage_name, s.type AS stage_type,
                  s.config AS stage_config
           FROM flows f
           LEFT JOIN flow_stage_bindings b ON b.flow_id = f.id
           LEFT JOIN stages s ON s.id = b.stage_id
           WHERE f.slug = $1
           ORDER BY b."order", b.id""",
        slug,
    )
    if not rows:
        return None
    first = rows[0]
    bindings = tuple(
        StageBinding(
            id=r["binding_id"], order=r["order"], stage_id=r["stage_id"], stage_name=r["stage_name"],
            stage_type=r["stage_type"], stage_config=json.loads(r["stage_config"]),
            evaluate_on_plan=r["evaluate_on_plan"], re_evaluate_policies=r["re_evaluate_policies"],
            invalid_response_action=r["invalid_response_action"],
        )
        for r in rows if r["binding_id"] is not None
    )
    return Flow(first["id"], first["slug"], first["name"], first["title"], first["designation"],
                first["policy_engine_mode"], first["denied_action"], bindings)


async def slug_for_designation(keystage: Keystage, designation: str) -> str | None:
    """The flow to use for a designation: the default one if it exists, else the first by slug."""
    return await keystage.pool.fetchval(
        "SELECT slug FROM flows WHERE designation = $1 ORDER BY slug <> ('default-' || $1 || '-flow'), slug LIMIT 1",
        designation,
    )
