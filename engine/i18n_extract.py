"""A Babel extractor for blueprint YAML: the user-visible texts admins put in flows and stages.

Flow titles, prompt labels and placeholders, and deny messages are translated when shown
(``gettext`` on the configured text), so the shipped default blueprints' texts must be in
the catalog. Referenced from babel.cfg as ``keystage.engine.i18n_extract:extract_blueprint``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

import yaml

# Keys whose string values a person reads on a flow page.
VISIBLE_KEYS = frozenset({"title", "label", "placeholder", "message"})


class _LineLoader(yaml.SafeLoader):
    """Keeps each scalar's line and ignores keystage's own tags (!Find, !Env)."""


def _ignore_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> None:
    return None


_LineLoader.add_multi_constructor("!", _ignore_tag)


def extract_blueprint(fileobj: BinaryIO, keywords: Any, comment_tags: Any, options: Any
                      ) -> Iterator[tuple[int, str, str, list[str]]]:
    root = yaml.compose(fileobj.read().decode("utf-8"), Loader=_LineLoader)
    if root is None:
        return
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if (isinstance(key, yaml.ScalarNode) and key.value in VISIBLE_KEYS
                        and isinstance(value, yaml.ScalarNode) and value.tag.endswith(":str") and value.value):
                    yield value.start_mark.line + 1, "gettext", value.value, []
                else:
                    stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
