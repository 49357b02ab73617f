"""Write docs/plugins/hooks.md from the hook specs' docstrings (engine/hookspecs.py).

    python docs/plugins/build_hooks.py           # rewrite hooks.md
    python docs/plugins/build_hooks.py --check   # exit 1 when hooks.md is not what the specs say

The docstrings are the documentation; this only turns their plain-text conventions into
Markdown: ``code`` → `code`, "Label:" paragraphs → bold labels, an indented "Arguments:"
block → a list, "Example::" + an indented block → a Python code block.
tests/test_hook_reference.py fails when hooks.md and the specs differ.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from pathlib import Path

from keystage.engine import hookspecs

HOOKS_MD = Path(__file__).resolve().parent / "hooks.md"

# Every hook, by topic; a hook missing here fails the build (so a new hook gets a place).
TOPICS: list[tuple[str, list[str]]] = [
    ("Kinds of things", ["register_stage_types", "register_policy_types", "register_provider_types",
                         "register_source_types", "register_password_hashers", "register_expression_helpers"]),
    ("Web, data and translations", ["register_routes", "register_migrations", "register_locales"]),
    ("Configuration and lifecycle", ["check_config", "before_serving", "after_serving"]),
    ("Events", ["on_event"]),
]

INTRO = """\
# Hook reference

Every hook keystage calls, generated from the docstrings of `keystage.engine.hookspecs` by
`python docs/plugins/build_hooks.py` (a test fails when this page and the code differ). Implement a
hook with the `hookimpl` marker from `keystage.engine`, in the module your entry point names, as a
function named exactly like the hook (a misspelled implementation stops startup with a line naming
your plugin). Accept only the arguments you use: keystage passes only those your function names.

```python
from keystage.engine import hookimpl

@hookimpl
def register_stage_types():
    return [MyStage]
```

New here? Start with the [plugin author guide](README.md) and the [stage tutorial](tutorial-stage.md).
"""

LABELS = ("Called:", "Returns:", "Several plugins:", "Arguments:", "Added in:")


def specs() -> dict[str, object]:
    return {n: f for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, "keystage_spec")}


def signature(name: str, fn: object) -> str:
    """``def name(arg: Type) -> Return`` with annotations as written (the form tests/test_hook_docs.py checks)."""
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params = ", ".join(f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
                       for p in sig.parameters.values())
    return f"def {name}({params}) -> {sig.return_annotation}"


def code(text: str) -> str:
    return re.sub(r"``(.+?)``", r"`\1`", text)


def markdown(doc: str) -> str:
    """The Markdown for one docstring (already dedented by ``inspect.getdoc``)."""
    out: list[str] = []
    paragraphs = re.split(r"\n\s*\n", doc.strip())
    index = 0
    while index < len(paragraphs):
        paragraph = paragraphs[index]
        index += 1
        if paragraph.rstrip().endswith("::"):
            # The example: every following indented paragraph belongs to it.
            lead = paragraph.rstrip()[:-2].strip()
            block = []
            while index < len(paragraphs) and paragraphs[index].startswith("    "):
                block.append(paragraphs[index])
                index += 1
            out.append(f"**{lead}:**" if lead else "")
            out.append("```python\n" + textwrap.dedent("\n\n".join(block)).strip("\n") + "\n```")
            continue
        if paragraph.startswith("Arguments:"):
            items = re.split(r"\n    (?=``)", "\n" + paragraph.split("\n", 1)[1] if "\n" in paragraph else "")
            bullets = [" ".join(line.strip() for line in item.splitlines()) for item in items if item.strip()]
            out.append("**Arguments:**\n\n" + "\n".join(f"- {code(b)}" for b in bullets))
            continue
        for label in LABELS:
            if paragraph.startswith(label):
                paragraph = f"**{label}**{paragraph[len(label):]}"
                break
        if paragraph.startswith("May be async."):
            paragraph = "**May be async.**" + paragraph[len("May be async."):]
        out.append(code(paragraph))
    return "\n\n".join(p for p in out if p)


def conventions() -> str:
    doc = inspect.getdoc(hookspecs) or ""
    bullets = doc.split("Conventions:", 1)[1].strip()
    return "## Conventions\n\n" + code(bullets)


def render() -> str:
    found = specs()
    placed = [name for _, names in TOPICS for name in names]
    if sorted(placed) != sorted(found):
        raise SystemExit(f"build_hooks.py: place these hooks in TOPICS: {sorted(set(found) ^ set(placed))}")
    parts = [INTRO, conventions(), "## Contents\n\n" + "\n".join(
        f"- {topic}: " + ", ".join(f"[`{n}`](#{n})" for n in names) for topic, names in TOPICS)]
    for _topic, names in TOPICS:
        for name in names:
            fn = found[name]
            parts.append(f"## `{name}`\n\n```python\n{signature(name, fn)}\n```\n\n{markdown(inspect.getdoc(fn) or '')}")
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if HOOKS_MD.read_text() != text:
            print(f"{HOOKS_MD} is out of date: run python docs/plugins/build_hooks.py", file=sys.stderr)
            return 1
        return 0
    HOOKS_MD.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
