"""``keystage plugin new NAME --kind stage|policy|provider|source``: a plugin package that passes its own tests.

The files come from ``engine/scaffold/`` (``common/`` plus the kind's folder); see its README
for the placeholders. Nothing here knows a kind's content: adding a kind is adding a folder.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .plugins import API_VERSION, PLUGIN_NAME

SCAFFOLD = Path(__file__).resolve().parent / "scaffold"
KINDS = ("stage", "policy", "provider", "source")
# Also a Python identifier part, a SQL table prefix and a migration file name part.
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


class ScaffoldError(Exception):
    pass


@dataclass(frozen=True)
class Names:
    """Every name a new plugin needs, derived from the one the author chose."""

    name: str  # the plugin's (entry point) name: KEYSTAGE_PLUGINS, /-/plugins/<name>/, "<name>/..." templates
    kind: str

    @property
    def type(self) -> str:
        return self.name.replace("-", "_")

    @property
    def module(self) -> str:
        return f"keystage_{self.type}"

    @property
    def distribution(self) -> str:
        return f"keystage-{self.name}"

    @property
    def cls(self) -> str:
        return "".join(part.capitalize() for part in self.type.split("_") if part)

    @property
    def title(self) -> str:
        return " ".join(self.type.split("_")).capitalize()

    @property
    def api(self) -> str:
        major = int(API_VERSION.split(".")[0])
        return f">={API_VERSION},<{major + 1}"

    def replacements(self) -> dict[str, str]:
        return {
            "@@name@@": self.name, "@@kind@@": self.kind, "@@type@@": self.type, "@@module@@": self.module,
            "@@distribution@@": self.distribution, "@@class@@": self.cls, "@@title@@": self.title,
            "@@domain@@": self.module, "@@api@@": self.api,
        }

    def path(self, relative: Path) -> Path:
        parts = [{"MODULE": self.module, "DOMAIN": self.module}.get(p, p) for p in relative.parts]
        parts = [p.replace("TYPE", self.type).replace("DOMAIN", self.module) for p in parts]
        return Path(*parts).with_name(parts[-1].removesuffix(".tmpl"))


def names_for(name: str, kind: str) -> Names:
    name = name.strip().removeprefix("keystage-").removeprefix("keystage_")
    if not NAME.match(name) or not PLUGIN_NAME.match(name) or name.endswith(("-", "_")):
        raise ScaffoldError(
            f"{name!r} cannot be a plugin name: use 1-40 lowercase letters, digits, '-' or '_', starting with a letter"
        )
    if kind not in KINDS:
        raise ScaffoldError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    return Names(name, kind)


def taken_type_names(kind: str) -> dict[str, str]:
    """Type names of this kind that the bundled plugins already register, with their owners."""
    hook = {"stage": "register_stage_types", "policy": "register_policy_types",
            "provider": "register_provider_types", "source": "register_source_types"}[kind]
    from .config import load_settings
    from .plugins import PluginManager

    manager = PluginManager(load_settings({}))
    manager.load()
    return {getattr(item, "type_name", ""): owner
            for owner, item in manager.collect(hook, lambda item: hasattr(item, "type_name"), "a class")}


def create(name: str, kind: str, directory: Path | None = None) -> tuple[Names, Path, list[Path]]:
    """Write the package; returns its names, its folder and the files written (relative)."""
    names = names_for(name, kind)
    owner = taken_type_names(kind).get(names.type)
    if owner:
        raise ScaffoldError(f"{kind} type {names.type!r} is already registered by plugin {owner}: choose another name")
    target = Path(directory) if directory is not None else Path.cwd() / names.distribution
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not empty")
    written: list[Path] = []
    for source_root in (SCAFFOLD / "common", SCAFFOLD / kind):
        for source in sorted(source_root.rglob("*.tmpl")):
            relative = names.path(source.relative_to(source_root))
            text = source.read_text(encoding="utf-8")
            for placeholder, value in names.replacements().items():
                text = text.replace(placeholder, value)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(text, encoding="utf-8")
            written.append(relative)
    return names, target, written


@click.group("plugin")
def plugin() -> None:
    """Write keystage plugins."""


@plugin.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default="stage", show_default=True, help="What the plugin provides.")
@click.option("--directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to create the package (default: ./keystage-NAME).")
def new(name: str, kind: str, directory: Path | None) -> None:
    """Create a plugin package NAME whose own tests pass right away."""
    try:
        names, target, written = create(name, kind, directory)
    except ScaffoldError as exc:
        click.echo(f"keystage: {exc}", err=True)
        sys.exit(2)
    click.echo(f"created {target} ({kind} plugin {names.name!r}, package {names.module}):")
    for path in written:
        click.echo(f"  {path.as_posix()}")
    click.echo(f"""
next:
  cd {target}
  pip install -e '.[test]'
  pytest                       # KEYSTAGE_TEST_DATABASE_URL=postgresql://... or an embedded PostgreSQL
  KEYSTAGE_PLUGINS={names.name} keystage plugins list""")
