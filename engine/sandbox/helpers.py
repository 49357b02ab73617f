"""Helpers that plugins offer to expressions (``register_expression_helpers()``), made portable.

Expressions run in worker processes, so a helper has to be rebuilt there. A helper is
either

* a function (or other callable) that can be imported by its ``__module__`` and
  ``__qualname__`` — a module-level ``def`` in the plugin's package; lambdas, closures,
  bound methods and objects made at run time are refused, because the worker could not
  get the same thing back; or the string ``"package.module:name"`` naming one;
* plain data (str, int, float, bool, None, and lists/dicts of them), handed in frozen.

In the worker a callable helper is called with the expression's arguments and its answer
is frozen to plain data (dicts become read-only mappings, lists tuples); an answer of any
other type is an error, so a helper cannot hand out a live host object by accident.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import keyword
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PluginError
from .scope import CORE_HELPERS, SAFE_BUILTINS

if TYPE_CHECKING:
    from ..plugins import PluginManager

RESERVED = frozenset(SAFE_BUILTINS) | frozenset(CORE_HELPERS) | {"request", "print", "printed"}


@dataclasses.dataclass(frozen=True)
class HelperSpec:
    """A helper as the workers receive it: an import reference, or a plain value."""

    name: str
    ref: str | None = None
    value: Any = None


def _resolve(ref: str) -> Any:
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"{ref!r} is not 'package.module:name'")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def spec_for(name: str, helper: Any) -> HelperSpec:
    """The portable form of one helper; ``ValueError`` says why it cannot be one."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ValueError(f"{name!r} is not a valid helper name (an identifier not starting with '_')")
    if name in RESERVED:
        raise ValueError(f"{name!r} is already a name in expressions")
    if isinstance(helper, str) and ":" in helper and not helper.startswith(":"):
        target = _resolve(helper)
        if not callable(target):
            raise ValueError(f"{helper!r} is not callable")
        return HelperSpec(name, ref=helper)
    if callable(helper):
        module_name = getattr(helper, "__module__", None)
        qualname = getattr(helper, "__qualname__", None)
        if not module_name or not qualname or "<" in qualname or module_name == "__main__":
            raise ValueError(f"helper {name!r} must be a module-level function (lambdas and closures "
                             "cannot reach the sandbox workers)")
        ref = f"{module_name}:{qualname}"
        try:
            same = _resolve(ref) is helper
        except (ImportError, AttributeError, ValueError):
            same = False
        if not same:
            raise ValueError(f"helper {name!r}: importing {ref} does not give the same object back")
        return HelperSpec(name, ref=ref)
    try:
        json.dumps(helper, allow_nan=False)
    except (TypeError, ValueError):
        kind = type(helper).__name__
        raise ValueError(f"helper {name!r} must be a function or plain JSON data, not {kind}") from None
    return HelperSpec(name, value=helper)


def helper_specs(helpers: Mapping[str, Any]) -> list[HelperSpec]:
    return [spec_for(name, helper) for name, helper in helpers.items()]


def collect_helpers(plugins: PluginManager) -> list[HelperSpec]:
    """Every plugin's ``register_expression_helpers()``; ``PluginError`` names the plugin at fault."""
    owners: dict[str, str] = {}
    specs: list[HelperSpec] = []
    answers: Iterable[tuple[str, Any]] = plugins.call_each("register_expression_helpers")
    for plugin, answer in answers:
        if answer is None:
            continue
        if not isinstance(answer, Mapping):
            raise PluginError(f"plugin {plugin}: register_expression_helpers returned "
                              f"{type(answer).__name__}, not a dict")
        for name, helper in answer.items():
            if name in owners:
                raise PluginError(f"expression helper {name!r} is registered by both plugin {owners[name]} "
                                  f"and plugin {plugin}")
            try:
                specs.append(spec_for(name, helper))
            except (ValueError, ImportError, AttributeError) as exc:
                raise PluginError(f"plugin {plugin}: expression helper {name!r}: {exc}") from None
            owners[name] = plugin
    return specs
