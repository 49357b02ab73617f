"""The expression sandbox: admin-written Python, compiled once, run in capped worker processes.

Public API (documented in docs/expressions.md)::

    from keystage.engine import sandbox

    sandbox.check(source)                        # at save time: ExpressionError(kind="compile") with line/column
    result = await sandbox.evaluate(source, context={...}, timeout=1.0)
    results = await sandbox.evaluate_many([(source, context), ...])

``evaluate`` and ``evaluate_many`` accept ``sandbox=`` (the pool to use); without it they
use one pool per process, created on first use. Inside keystage, use
``get_sandbox(keystage)``: the pool kept in ``keystage.state["sandbox"]``, built with the
plugins' expression helpers and closed with the runtime.
"""

from __future__ import annotations

import atexit
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .compiler import Compiled, check, compile_expression
from .errors import ExpressionError
from .helpers import HelperSpec, collect_helpers
from .pool import DEFAULT_TIMEOUT, MAX_TIMEOUT, EvaluationResult, Kind, Sandbox, UserLoader

if TYPE_CHECKING:
    from ..runtime import Keystage

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "Compiled",
    "EvaluationResult",
    "ExpressionError",
    "HelperSpec",
    "Sandbox",
    "check",
    "collect_helpers",
    "compile_expression",
    "evaluate",
    "evaluate_many",
    "get_sandbox",
]

STATE_KEY = "sandbox"
_default: list[Sandbox] = []  # the process-wide pool for callers without a runtime


def get_sandbox(keystage: Keystage) -> Sandbox:
    """The runtime's sandbox (created on first use with the plugins' helpers; workers start lazily)."""
    found = keystage.state.get(STATE_KEY)
    if found is None or found.closed:
        found = keystage.state[STATE_KEY] = Sandbox(helpers=collect_helpers(keystage.plugins))
    return found


def _default_sandbox() -> Sandbox:
    if not _default or _default[0].closed:
        _default[:] = [Sandbox()]
    return _default[0]


@atexit.register
def _stop_default() -> None:
    for pool in _default:
        pool._kill_all()


async def evaluate(source: str, *, context: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT,
                   kind: Kind = "policy", helpers: Mapping[str, Any] | None = None,
                   user_loader: UserLoader | None = None, sandbox: Sandbox | None = None) -> EvaluationResult:
    """Run the function body ``source`` against ``context`` in a sandbox worker.

    ``context`` is plain data: ``user`` (username, email, name, is_active, is_superuser,
    attributes, groups), ``ip``, ``user_agent``, ``headers``, ``flow`` (slug, designation),
    ``context`` (plan data), ``application``, and ``users`` (users ``user_by`` may return,
    keyed ``"username:<lowercase>"`` / ``"email:<lowercase>"``). ``user_loader`` fetches
    the others on demand. ``kind="policy"`` must return a bool, ``"mapping"`` a dict of JSON
    data, ``"value"`` any JSON data (None included: "nothing"). Raises one ``ExpressionError`` with ``kind`` and ``line``.
    """
    pool = sandbox or _default_sandbox()
    return await pool.evaluate(source, context=context, timeout=timeout, kind=kind, helpers=helpers,
                               user_loader=user_loader)


async def evaluate_many(items: Sequence[tuple[str, Mapping[str, Any]]], *, timeout: float = DEFAULT_TIMEOUT,
                        kind: Kind = "policy", helpers: Mapping[str, Any] | None = None,
                        user_loader: UserLoader | None = None,
                        sandbox: Sandbox | None = None) -> list[EvaluationResult | ExpressionError]:
    """Run many ``(source, context)`` pairs in one round trip per worker; one result or error per item."""
    pool = sandbox or _default_sandbox()
    return await pool.evaluate_many(items, timeout=timeout, kind=kind, helpers=helpers, user_loader=user_loader)
