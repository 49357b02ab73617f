"""Where templates come from, in the order a name is looked up:

1. ``stages/<type_name>/...`` — each stage type's own folder (its class's ``template_folder``);
2. the kernel's ``web/templates`` — every unprefixed name (``base.html``, ``_field.html``, ...);
3. ``<plugin name>/...`` — each plugin's ``templates/`` folder next to its package, and the
   template folders of its blueprints.

So a plugin's template can never shadow a kernel one or another plugin's: it is only ever
reached through its plugin's (or its stage type's) prefix. Blueprints' own template folders
are never searched unprefixed (the app's loader replaces Quart's dispatching loader).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, PrefixLoader

if TYPE_CHECKING:
    from .runtime import Keystage

WEB_TEMPLATES = Path(__file__).resolve().parent.parent / "web" / "templates"


def plugin_package_dirs(plugin: object) -> list[Path]:
    """The directories of a plugin that is a package (``__path__``); empty for a module or object."""
    return [Path(p) for p in getattr(plugin, "__path__", None) or []]


def plugin_folders(keystage: Keystage, folder: str) -> dict[str, list[Path]]:
    """``{plugin name: [<package>/<folder>, ...]}`` for every enabled plugin that ships ``folder``."""
    found: dict[str, list[Path]] = {}
    for name, plugin in keystage.plugins.pm.list_name_plugin():
        dirs = [d / folder for d in plugin_package_dirs(plugin) if (d / folder).is_dir()]
        if dirs:
            found[name] = dirs
    return found


def template_loader(keystage: Keystage, extra_folders: Mapping[str, Iterable[str | Path]] | None = None) -> BaseLoader:
    """The app's loader; ``extra_folders`` adds folders (a plugin's blueprints') under a plugin's prefix."""
    stage_loaders: dict[str, BaseLoader] = {}
    for type_name, cls in keystage.stage_types.items():
        if cls.template_folder is not None:
            stage_loaders[type_name] = FileSystemLoader(str(cls.template_folder))
    folders = {name: [str(d) for d in dirs] for name, dirs in plugin_folders(keystage, "templates").items()}
    for name, dirs in (extra_folders or {}).items():
        folders.setdefault(name, []).extend(str(d) for d in dirs)
    return ChoiceLoader([
        PrefixLoader({"stages": PrefixLoader(stage_loaders, delimiter="/")}, delimiter="/"),
        FileSystemLoader(str(WEB_TEMPLATES)),
        PrefixLoader({name: FileSystemLoader(dirs) for name, dirs in folders.items()}, delimiter="/"),
    ])


async def render_page(template: str, **context: Any) -> str:
    """Render a page for a plugin's route the way keystage renders its own.

    The negotiated locale's ``_`` / ``ngettext`` / ``pgettext``, ``lang``, ``dir`` and the language
    switcher's data are in scope, so the template may ``{% extends "base.html" %}``. Call it while
    handling a request; name the template with its plugin's prefix (``"<plugin name>/page.html"``).
    """
    from quart import render_template

    from . import web_context

    return await render_template(template, **{**web_context.template_globals(), **context})
