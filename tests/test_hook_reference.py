"""docs/plugins/hooks.md is exactly what docs/plugins/build_hooks.py makes of the hook specs' docstrings.

test_hook_docs.py checks signatures; this checks the rest (arguments, return contract, several
plugins, example, "added in"), so that a changed docstring cannot leave the page behind.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

from keystage.engine import hookspecs

BUILD = Path(__file__).resolve().parent.parent / "docs" / "plugins" / "build_hooks.py"


def load_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_hooks", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_md_is_generated_from_the_docstrings() -> None:
    builder = load_builder()
    assert builder.HOOKS_MD.read_text() == builder.render(), (
        "docs/plugins/hooks.md is out of date: run `python docs/plugins/build_hooks.py`")


def test_every_hook_docstring_covers_the_contract() -> None:
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not hasattr(fn, "keystage_spec"):
            continue
        doc = inspect.getdoc(fn) or ""
        assert "Called:" in doc or doc.startswith("Called "), f"{name}: when is it called?"
        for part in ("Returns:", "Several plugins:", "Example::", "Added in:"):
            assert part in doc, f"{name}: no {part!r}"
        for argument in inspect.signature(fn).parameters:
            assert f"``{argument}`` —" in doc, f"{name}: argument {argument!r} is not described"
