"""docs/plugins/hooks.md documents every hook with its exact signature, so docs cannot drift."""

from __future__ import annotations

import inspect
from pathlib import Path

from keystage.engine import hookspecs

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins" / "hooks.md"


def spec_signature(name: str, fn: object) -> str:
    """``def name(arg: Type, ...) -> Return`` with annotations as written in the source."""
    signature = inspect.signature(fn)  # type: ignore[arg-type]
    params = ", ".join(
        f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
        for p in signature.parameters.values()
    )
    return f"def {name}({params}) -> {signature.return_annotation}"


def hook_specs() -> list[tuple[str, object]]:
    return [(n, f) for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "keystage_spec")]


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    text = DOC.read_text()
    missing = [spec_signature(n, f) for n, f in hook_specs() if spec_signature(n, f) not in text]
    assert not missing, f"document these in {DOC} (exact signature in a code block): {missing}"


def test_no_documented_hook_is_gone() -> None:
    names = {n for n, _ in hook_specs()}
    documented = {line[4:-1].strip("`") for line in DOC.read_text().splitlines() if line.startswith("## `")}
    assert documented <= names, f"documented but not a hook any more: {documented - names}"


def test_every_hook_says_when_it_was_added() -> None:
    for name, fn in hook_specs():
        assert "Added in:" in (inspect.getdoc(fn) or ""), name
