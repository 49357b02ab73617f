"""Where templates come from: the kernel's ``web/templates``, and each stage type's own folder
under ``stages/<type_name>/`` (so a stage's template can never shadow a kernel one)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, PrefixLoader

if TYPE_CHECKING:
    from .runtime import Keystage

WEB_TEMPLATES = Path(__file__).resolve().parent.parent / "web" / "templates"


def template_loader(keystage: Keystage) -> BaseLoader:
    stage_loaders: dict[str, BaseLoader] = {}
    for type_name, cls in keystage.stage_types.items():
        if cls.template_folder is not None:
            stage_loaders[type_name] = FileSystemLoader(str(cls.template_folder))
    return ChoiceLoader([
        PrefixLoader({"stages": PrefixLoader(stage_loaders, delimiter="/")}, delimiter="/"),
        FileSystemLoader(str(WEB_TEMPLATES)),
    ])
