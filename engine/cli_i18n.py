"""``keystage i18n``: extract, update, compile, check, stats and the pseudo-locale.

The work is done by ``engine/i18n_tools.py``; this module only parses options and prints.
Without ``--domain-dir`` the commands work on the kernel's ``locales/`` in the source
checkout keystage runs from; with it, on a plugin's own catalogs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import i18n_tools
from .i18n import DOMAIN, PSEUDO_LOCALES
from .i18n_tools import I18nToolError

F = TypeVar("F", bound=Callable[..., Any])


def _errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except I18nToolError as exc:
            click.echo(f"keystage: {exc}", err=True)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]


def _domain_options(func: F) -> F:
    func = click.option("--domain", help="gettext domain (default: keystage, or the only .pot in --domain-dir).")(func)
    return click.option(
        "--domain-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="A plugin's locales/ folder (<domain>.pot and <lang>/LC_MESSAGES/<domain>.po) "
             "instead of keystage's own.")(func)


def _where(domain_dir: Path | None, domain: str | None, *, read_only: bool = False) -> tuple[Path, str, Path]:
    """(catalog folder, domain, base for printing paths).

    Reading (check, stats) works on an installed copy too: its catalogs ship as package
    data. Writing needs the source checkout."""
    if domain_dir is None:
        if read_only:
            try:
                root = i18n_tools.source_root()
            except i18n_tools.I18nToolError:
                from .i18n import LOCALES_DIR

                return LOCALES_DIR, domain or DOMAIN, LOCALES_DIR.parent
        else:
            root = i18n_tools.source_root()
        return root / "locales", domain or DOMAIN, root
    return domain_dir, domain or i18n_tools.guess_domain(domain_dir), Path.cwd()


def _show(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


@click.group(name="i18n")
def i18n() -> None:
    """Translations: extract strings, update and check catalogs, see coverage."""


@i18n.command()
@_errors
def extract() -> None:
    """Collect every marked string of engine/, stages/, plugins/ and web/ into locales/keystage.pot."""
    root = i18n_tools.source_root()
    output = i18n_tools.extract(root)
    click.echo(f"wrote {_show(output, root)}; now run `keystage i18n update`")


@i18n.command()
@_domain_options
@click.option("--locale", "locales", multiple=True, help="Only this locale (repeatable).")
@click.option("--fuzzy/--no-fuzzy", default=False, show_default=True,
              help="Pre-fill new entries from similar old ones (marked fuzzy, to be reviewed).")
@_errors
def update(domain_dir: Path | None, domain: str | None, locales: tuple[str, ...], fuzzy: bool) -> None:
    """Merge the template into every catalog: new entries empty, dropped ones removed."""
    folder, domain, base = _where(domain_dir, domain)
    for path in i18n_tools.update(folder, domain, fuzzy=fuzzy, locales=locales or None):
        click.echo(f"updated {_show(path, base)}")


@i18n.command("compile")
@_domain_options
@_errors
def compile_(domain_dir: Path | None, domain: str | None) -> None:
    """Write .mo files (optional: keystage reads the .po files directly)."""
    folder, domain, base = _where(domain_dir, domain)
    for path in i18n_tools.compile_catalogs(folder, domain):
        click.echo(f"compiled {_show(path, base)}")


@i18n.command()
@_domain_options
@click.option("--locale", "locales", multiple=True, help="Only this locale (repeatable).")
@_errors
def check(domain_dir: Path | None, domain: str | None, locales: tuple[str, ...]) -> None:
    """Fail (exit 1), listing file:line, on anything wrong in the shipped catalogs."""
    folder, domain, base = _where(domain_dir, domain, read_only=True)
    problems = i18n_tools.check(folder, domain, locales=locales or None)
    checked = sorted(locales) if locales else sorted(i18n_tools.catalog_paths(folder, domain))
    for problem in problems:
        click.echo(problem.format(base))
    if problems:
        bad = sorted({p.locale for p in problems})
        click.echo(f"{len(problems)} problem(s) in {', '.join(bad)}", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {len(checked)} catalog(s) of {domain} ({', '.join(checked) or 'none'})")


@i18n.command()
@_domain_options
@click.option("--locale", "locales", multiple=True, help="Only this locale (repeatable).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_errors
def stats(domain_dir: Path | None, domain: str | None, locales: tuple[str, ...], fmt: str) -> None:
    """Per locale: translated %, fuzzy and missing entries."""
    folder, domain, _ = _where(domain_dir, domain, read_only=True)
    rows = i18n_tools.stats(folder, domain, locales=locales or None)
    if fmt == "json":
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
        return
    width = max([len(r.locale) for r in rows] + [6])
    click.echo(f"{'locale':<{width}}  {'translated':>10}  {'fuzzy':>5}  {'missing':>7}  total")
    for row in rows:
        note = "  (pseudo)" if i18n_tools.is_pseudo(row.locale) else ""
        click.echo(f"{row.locale:<{width}}  {row.percent:>8.1f} %  {row.fuzzy:>5}  {row.missing:>7}  "
                   f"{row.total}{note}")


@i18n.command()
@_domain_options
@_errors
def pseudo(domain_dir: Path | None, domain: str | None) -> None:
    """Regenerate the pseudo-locale en_XA (accented, ~30 % longer, bracketed) from the template."""
    folder, domain, base = _where(domain_dir, domain)
    for locale in PSEUDO_LOCALES:
        click.echo(f"wrote {_show(i18n_tools.write_pseudo(folder, domain, locale), base)}")

