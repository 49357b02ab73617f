"""Property mappings: admin expressions that turn a user into what a provider sends (OIDC claims,
SAML attributes). They run in the sandbox like expression policies, with ``kind="mapping"`` (a
dict) or ``"value"`` (any JSON value).

A mapping that fails gives nothing (never half a value): the caller leaves its output out, and a
``property_mapping_exception`` event tells the admin which mapping, why and on which line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from . import events, sandbox
from .policy import PolicyRequest
from .sandbox.context import policy_context, user_loader

if TYPE_CHECKING:
    from .request_info import RequestInfo
    from .runtime import Keystage
    from .users import User

log = logging.getLogger("keystage.mappings")
FAILED = object()


async def evaluate_mapping(keystage: Keystage, source: str, user: User, request: RequestInfo | None,
                           *, label: dict[str, Any], kind: Literal["mapping", "value"] = "mapping") -> Any:
    """The expression's value for ``user``, or ``FAILED``. ``label`` names the mapping in the event
    (``{"scope": "profile"}``, ``{"provider": "...", "attribute": "..."}``). ``kind="mapping"``
    wants a dict (claims), ``"value"`` any JSON value (one attribute's value or values)."""
    pool = sandbox.get_sandbox(keystage)
    try:
        context = await policy_context(PolicyRequest(keystage, user, request, {}),
                                       sandbox.compile_expression(source), pool.helper_names)
        result = await pool.evaluate(source, context=context, kind=kind, user_loader=user_loader(keystage))
    except sandbox.ExpressionError as exc:
        log.warning("property mapping %s failed: %s", label, exc)
        await events.record(keystage, events.Event(
            "property_mapping_exception", user_id=user.id, username=user.username,
            context={**label, "reason": str(exc), "line": getattr(exc, "line", None)}))
        return FAILED
    return result.value
