"""Registries of the kinds plugins provide (stage types, policy types, ...), keyed by ``type_name``."""

from __future__ import annotations

from typing import Any

from .errors import PluginError
from .plugins import PluginManager


def collect_types(plugins: PluginManager, hook_name: str, base: type, what: str) -> dict[str, type]:
    """``{type_name: class}`` from every plugin's answer to ``hook_name``.

    Two plugins answering the same ``type_name`` is a startup error naming both.
    """
    found: dict[str, type] = {}
    owners: dict[str, str] = {}

    def acceptable(item: Any) -> bool:
        return isinstance(item, type) and issubclass(item, base) and isinstance(getattr(item, "type_name", None), str)

    for plugin_name, cls in plugins.collect(hook_name, acceptable, f"a {what} class with a type_name"):
        name = cls.type_name
        if name in found:
            raise PluginError(f"{what} type {name!r} is registered by both {owners[name]} and {plugin_name}")
        found[name] = cls
        owners[name] = plugin_name
    return found
