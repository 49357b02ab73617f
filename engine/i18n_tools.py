"""Translator tooling behind ``keystage i18n``: extract, update, compile, check, stats, pseudo-locale.

Nothing here is click-specific: the CLI (``engine/cli_i18n.py``) and the tests call these
functions directly. A *domain directory* is a gettext tree, ``<dir>/<domain>.pot`` and
``<dir>/<locale>/LC_MESSAGES/<domain>.po``; the kernel's is ``locales/`` with the domain
``keystage``, a plugin's is its own ``locales/`` with its own domain.

Every catalog found in a domain directory counts as *shipped*: it must be complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gettext
import io
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.catalog import Catalog, Message
from babel.messages.mofile import write_mo
from babel.messages.pofile import PoFileError, read_po, write_po

from . import i18n

DOMAIN = i18n.DOMAIN
# Python %-conversions: %(name)s, %(num)d, %s, %5.2f ... (%% is a literal percent sign).
CONVERSION = re.compile(r"%(?:\((\w+)\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")
CLDR_ORDER = ("zero", "one", "two", "few", "many", "other")
# Whole numbers a plural rule is compared on (CLDR's decimal-only categories never apply to them).
PLURAL_SAMPLE = range(1000)
# What `extract` passes to Babel; tests/test_i18n.py runs the same extraction to compare.
EXTRACT_DIRS = ("engine", "stages", "plugins", "web")
EXTRACT_OPTIONS = ("-F", "babel.cfg", "-k", "N_", "-c", "Translators:", "--project", "keystage",
                   "--copyright-holder", "the keystage authors")


class I18nToolError(Exception):
    """A tool cannot run (no source checkout, no template ...); the message says why."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong in a catalog, at ``path:lineno`` (``lineno`` 0 when the whole file is meant)."""

    path: Path
    lineno: int
    locale: str
    message: str
    msgid: str | None = None

    def format(self, base: Path | None = None) -> str:
        path = self.path
        if base is not None:
            with contextlib.suppress(ValueError):
                path = self.path.resolve().relative_to(base.resolve())
        where = f"{path}:{self.lineno}" if self.lineno else f"{path}"
        entry = f" {self.msgid!r}" if self.msgid is not None else ""
        return f"{where}: {self.locale}:{entry} {self.message}"


@dataclasses.dataclass(frozen=True)
class LocaleStats:
    locale: str
    total: int
    translated: int
    fuzzy: int
    missing: int

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.translated / self.total, 1)

    def as_json(self) -> dict[str, object]:
        return {"locale": self.locale, "total": self.total, "translated": self.translated,
                "percent": self.percent, "fuzzy": self.fuzzy, "missing": self.missing}


# -- where things are ----------------------------------------------------------------------


def source_root(package_dir: Path | None = None) -> Path:
    """The repository checkout keystage runs from; refuses an installed copy without sources.

    ``package_dir`` is where ``keystage.engine`` lives (this module's folder by default)."""
    root = Path(package_dir or Path(__file__).resolve().parent).parent
    needed = [root / "babel.cfg", root / "locales", *(root / d for d in EXTRACT_DIRS)]
    absent = [p.name for p in needed if not p.exists()]
    if absent:
        raise I18nToolError(
            f"keystage is installed at {root} without its sources (no {', '.join(absent)} there). "
            "Run `keystage i18n` from a source checkout: git clone the repository and "
            "`pip install -e .` it, or pass --domain-dir for a plugin's own catalogs.")
    return root


def catalog_paths(domain_dir: Path, domain: str = DOMAIN) -> dict[str, Path]:
    """``{locale: path}`` for every ``<locale>/LC_MESSAGES/<domain>.po`` under ``domain_dir``."""
    return {p.parent.parent.name: p for p in sorted(Path(domain_dir).glob(f"*/LC_MESSAGES/{domain}.po"))}


def guess_domain(domain_dir: Path) -> str:
    """The domain of a plugin's catalogs: its single ``.pot`` file, or its ``.po`` files' name."""
    names = {p.stem for p in Path(domain_dir).glob("*.pot")}
    if not names:
        names = {p.stem for p in Path(domain_dir).glob("*/LC_MESSAGES/*.po")}
    if len(names) != 1:
        found = ", ".join(sorted(names)) or "none"
        raise I18nToolError(f"cannot tell the gettext domain of {domain_dir} (found: {found}); pass --domain")
    return names.pop()


def is_pseudo(locale: str) -> bool:
    return locale in i18n.PSEUDO_LOCALES


def _read(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale=locale, abort_invalid=True)


def _write(path: Path, catalog: Catalog) -> None:
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=76, ignore_obsolete=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _key(message: Message) -> tuple[str | None, str | tuple[str, ...]]:
    return message.context, message.id if isinstance(message.id, str) else tuple(message.id)


def _entries(catalog: Catalog) -> Iterator[Message]:
    return (m for m in catalog if m.id)


def _first_id(message: Message) -> str:
    return message.id if isinstance(message.id, str) else message.id[0]


# -- extract, update, compile ------------------------------------------------------------


def extract(root: Path | None = None, output: Path | None = None) -> Path:
    """Collect the marked strings of the kernel and bundled plugins into ``locales/keystage.pot``."""
    from babel.messages.frontend import CommandLineInterface

    root = root or source_root()
    output = Path(output) if output else root / "locales" / f"{DOMAIN}.pot"
    args = ["pybabel", "--quiet", "extract", *EXTRACT_OPTIONS, "-o", str(output.resolve()), *EXTRACT_DIRS]
    # Babel writes locations relative to the working directory: run it from the root.
    with contextlib.chdir(root):
        status = CommandLineInterface().run(args)
    if status not in (0, None):
        raise I18nToolError(f"pybabel extract failed with status {status}")
    return output


def update(domain_dir: Path, domain: str = DOMAIN, *, fuzzy: bool = False,
           locales: Iterable[str] | None = None) -> list[Path]:
    """Merge ``<domain>.pot`` into every catalog (or ``locales``); returns the files written.

    New entries arrive empty; without ``fuzzy`` no translation is guessed from a similar
    string. Entries the template dropped are removed. Pseudo-locales are regenerated instead.
    """
    template = _template(domain_dir, domain)
    if template is None:
        raise I18nToolError(f"no template {Path(domain_dir) / (domain + '.pot')}: run extract first")
    wanted = set(locales) if locales else None
    written = []
    for locale, path in catalog_paths(domain_dir, domain).items():
        if wanted is not None and locale not in wanted:
            continue
        if is_pseudo(locale):
            _write_pseudo_file(path, template, locale)
        else:
            catalog = _read(path, locale)
            catalog.update(template, no_fuzzy_matching=not fuzzy)
            _write(path, catalog)
        written.append(path)
    return written


def compile_catalogs(domain_dir: Path, domain: str = DOMAIN) -> list[Path]:
    """Write ``.mo`` files next to the ``.po`` files (fuzzy entries left out). Optional:
    keystage itself reads the ``.po`` files."""
    written = []
    for locale, path in catalog_paths(domain_dir, domain).items():
        catalog = _read(path, locale)
        target = path.with_suffix(".mo")
        with target.open("wb") as handle:
            write_mo(handle, catalog, use_fuzzy=False)
        written.append(target)
    return written


# -- the pseudo-locale ---------------------------------------------------------------------

_ACCENTED = dict(zip(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "åƀçðéƒĝĥîĵķļɱñöþǫŕšţûṽŵẋýžÅƁÇÐÉƑĜĤÎĴĶĻṀÑÖÞǪŔŠŢÛṼŴẊÝŽ", strict=True))
# Left as they are: %-placeholders, {format} fields, HTML tags and entities.
_TOKEN = re.compile(r"%(?:\(\w+\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]|\{[^{}]*\}|<[^<>]*>|&#?\w+;")
PSEUDO_EXPANSION = 0.3


def pseudo_translate(text: str) -> str:
    """``Sign in`` → ``[Ŝîĝñ îñ ~~~]``: accented, ~30 % longer, bracketed, tokens intact."""
    if not text:
        return text
    parts, visible, last = [], 0, 0
    for match in _TOKEN.finditer(text):
        chunk = text[last:match.start()]
        parts.append(chunk.translate(str.maketrans(_ACCENTED)))
        visible += len(chunk)
        parts.append(match.group(0))
        last = match.end()
    chunk = text[last:]
    parts.append(chunk.translate(str.maketrans(_ACCENTED)))
    visible += len(chunk)
    padding = "~" * max(1, math.ceil(visible * PSEUDO_EXPANSION))
    return f"[{''.join(parts)} {padding}]"


def pseudo_catalog(template: Catalog, locale: str = "en_XA") -> Catalog:
    """A complete catalog for the pseudo-locale: every template entry, pseudo-translated.

    Its ``locale`` is the base language's (Babel cannot look up ``en_XA``), so the header
    carries that language's Plural-Forms; ``write_pseudo`` writes the pseudo-locale's name.
    """
    base = i18n.PSEUDO_LOCALES[locale]
    categories = _categories(Locale.parse(base))
    catalog = Catalog(locale=base, domain=template.domain, project=template.project,
                      version=template.version, copyright_holder="the keystage authors",
                      creation_date=template.creation_date, revision_date=template.creation_date,
                      language_team="none: generated by `keystage i18n pseudo`",
                      last_translator="keystage i18n pseudo", fuzzy=False)
    catalog.header_comment = (
        f"# Pseudo-locale {locale}: the template's strings, accented,\n"
        "# ~30 % longer and in brackets, to find untranslatable text and\n"
        "# layouts that break with longer text.\n"
        "# Generated by `keystage i18n pseudo`: do not edit, do not translate.")
    for message in _entries(template):
        if isinstance(message.id, str):
            string: str | tuple[str, ...] = pseudo_translate(message.id)
        else:
            singular, plural = message.id[0], message.id[1]
            string = tuple(pseudo_translate(singular if categories[i] == "one" else plural)
                           for i in range(len(categories)))
        catalog.add(message.id, string, locations=message.locations, flags=message.flags - {"fuzzy"},
                    auto_comments=message.auto_comments, context=message.context)
    return catalog


def _write_pseudo_file(path: Path, template: Catalog, locale: str) -> None:
    catalog = pseudo_catalog(template, locale)
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=76, ignore_obsolete=True)
    base = f'"Language: {i18n.PSEUDO_LOCALES[locale]}\\n"\n'.encode()
    text = buffer.getvalue().replace(base, f'"Language: {locale}\\n"\n'.encode(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)


def write_pseudo(domain_dir: Path, domain: str = DOMAIN, locale: str = "en_XA") -> Path:
    """(Re)generate ``<domain_dir>/<locale>/LC_MESSAGES/<domain>.po`` from the template."""
    template = _template(domain_dir, domain)
    if template is None:
        raise I18nToolError(f"no template {Path(domain_dir) / (domain + '.pot')}: run extract first")
    path = Path(domain_dir) / locale / "LC_MESSAGES" / f"{domain}.po"
    _write_pseudo_file(path, template, locale)
    return path


# -- plural rules --------------------------------------------------------------------------


def _categories(locale: Locale) -> list[str]:
    rule = locale.plural_form
    return [c for c in CLDR_ORDER if any(rule(n) == c for n in PLURAL_SAMPLE)]


def _plural_expression(locale: str) -> str:
    from babel.messages.plurals import get_plural

    return get_plural(locale).plural_expr


def cldr_locale(locale: str) -> Locale | None:
    """The Babel locale whose CLDR data applies (a pseudo-locale borrows its base's)."""
    try:
        return Locale.parse(i18n.PSEUDO_LOCALES.get(locale, locale))
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def expected_plural_forms(locale: str) -> list[str]:
    """The CLDR categories ``locale`` uses for whole numbers, in CLDR order: one ``msgstr[i]`` each."""
    parsed = cldr_locale(locale)
    if parsed is None:
        raise I18nToolError(f"{locale} is not a locale Babel/CLDR knows")
    return _categories(parsed)


def plural_rule_errors(locale: str, nplurals: int, expression: str) -> list[str]:
    """Why a ``Plural-Forms`` header disagrees with CLDR for ``locale`` (empty when it agrees)."""
    parsed = cldr_locale(locale)
    if parsed is None:
        return [f"{locale} is not a locale Babel/CLDR knows; use a code such as de, pt_BR, zh_Hans"]
    categories = _categories(parsed)
    if nplurals != len(categories):
        return [f"Plural-Forms says nplurals={nplurals}, CLDR has {len(categories)} forms for "
                f"{locale} ({', '.join(categories)}); see docs/translators.md#plural-forms"]
    try:
        plural = gettext.c2py(expression)
    except (ValueError, SyntaxError) as exc:
        return [f"Plural-Forms expression {expression!r} is not valid: {exc}"]
    rule = parsed.plural_form
    wrong = [n for n in PLURAL_SAMPLE if plural(n) != categories.index(rule(n))]
    if wrong:
        return [f"Plural-Forms expression {expression!r} disagrees with CLDR for n in "
                f"{wrong[:10]}{' ...' if len(wrong) > 10 else ''}; see docs/translators.md#plural-forms"]
    return []


# -- check ---------------------------------------------------------------------------------


def _template(domain_dir: Path, domain: str) -> Catalog | None:
    path = Path(domain_dir) / f"{domain}.pot"
    if not path.is_file():
        return None
    return _read(path)


def _conversions(text: str) -> list[str]:
    return sorted(m.group(0) for m in CONVERSION.finditer(text) if m.group(0) != "%%")


def _relative(path: Path, template_path: Path | None) -> str:
    if template_path is not None:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(template_path.parent))
    return str(path)


def _header_line(path: Path, name: str) -> int:
    for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
        if line.startswith(f'"{name}:'):
            return number
    return 1


def _plural_form_counts(path: Path) -> dict[int, int]:
    """``{line of msgid: number of msgstr[i] lines}`` as written (Babel pads or cuts them on reading)."""
    counts: dict[int, int] = {}
    current = 0
    for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
        if line.startswith("msgid "):
            current = number
        elif line.startswith("msgstr[") and current:
            counts[current] = counts.get(current, 0) + 1
    return counts


def _single_number_forms(catalog: Catalog) -> set[int]:
    """Plural forms used for exactly one number (Arabic "one", "two"): they may spell it out."""
    try:
        plural = gettext.c2py(catalog.plural_expr)
    except (ValueError, SyntaxError):
        return set()
    used: dict[int, int] = {}
    for n in PLURAL_SAMPLE:
        index = plural(n)
        used[index] = used.get(index, 0) + 1
    return {index for index, count in used.items() if count == 1}


def _message_problems(path: Path, locale: str, catalog: Catalog, message: Message,
                      written_forms: dict[int, int], single_forms: set[int]) -> Iterator[Problem]:
    msgid = _first_id(message)

    def problem(text: str) -> Problem:
        return Problem(path, message.lineno or 0, locale, text, msgid)

    if message.fuzzy:
        yield problem("is fuzzy: check the translation, then delete the `fuzzy` flag")
    ids = [message.id] if isinstance(message.id, str) else list(message.id)
    strings = [message.string] if isinstance(message.string, str) else list(message.string)
    written = written_forms.get(message.lineno or 0, len(strings))
    if len(ids) > 1 and written != catalog.num_plurals:
        yield problem(f"has {written} plural forms, the catalog's Plural-Forms has {catalog.num_plurals}")
        return
    if len(ids) == 1 and len(strings) > 1:
        yield problem("has plural forms but no msgid_plural")
    empty = [i for i, s in enumerate(strings) if not s]
    if empty:
        forms = f" (form {', '.join(map(str, empty))})" if len(ids) > 1 else ""
        yield problem(f"is not translated{forms}")
    expected = _conversions(ids[0])
    if not message.python_format and not expected:
        return
    names = {m.group(1) for m in CONVERSION.finditer(" ".join(ids)) if m.group(1)}
    # A form used for exactly one number may leave out the count ("one character"), nothing else.
    without_count = [c for c in expected if not c.startswith("%(num)")]
    for index, string in enumerate(strings):
        if not string:
            continue
        label = f"form {index}: " if len(ids) > 1 else ""
        found = _conversions(string)
        allowed = (expected, without_count) if len(ids) > 1 and index in single_forms else (expected,)
        if found not in allowed:
            yield problem(f"{label}placeholders {found} differ from the original's {expected}")
            continue
        try:
            string % (dict.fromkeys(names, 1) if names else tuple(1 for _ in found))
        except (ValueError, TypeError, KeyError) as exc:
            yield problem(f"{label}cannot be formatted by Python ({exc}); write a literal % as %%")


# One line of a .po file: a keyword with a C string, a continued string, a comment or nothing.
_PO_STRING = r'"(?:[^"\\]|\\.)*"'
_PO_LINE = re.compile(rf"(?:(?:msgctxt|msgid|msgid_plural|msgstr|msgstr\[\d+\])\s+{_PO_STRING}|{_PO_STRING}"
                      rf"|#.*|)\s*")


def syntax_errors(path: Path, locale: str) -> list[Problem]:
    """Lines that are not .po syntax (Babel's reader silently accepts some, e.g. a missing quote)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Problem(path, 0, locale, f"syntax error: not UTF-8 ({exc})")]
    return [Problem(path, number, locale, f"syntax error: {line.strip()!r} is not a keyword with a quoted string")
            for number, line in enumerate(text.splitlines(), 1) if not _PO_LINE.fullmatch(line)]


def _too_many_forms(path: Path, locale: str) -> list[Problem]:
    text = path.read_text("utf-8", errors="replace")
    match = re.search(r"nplurals\s*=\s*(\d+)", text)
    nplurals = int(match.group(1)) if match else 2
    lines = text.splitlines()
    return [Problem(path, line, locale, f"has {count} plural forms, the catalog's Plural-Forms has {nplurals}",
                    lines[line - 1][len("msgid "):].strip().strip('"'))
            for line, count in _plural_form_counts(path).items() if count > nplurals]


def check_catalog(path: Path, locale: str, template: Catalog | None,
                  template_path: Path | None = None) -> list[Problem]:
    """Everything wrong with one shipped catalog (see ``check``)."""
    path = Path(path)
    syntax = syntax_errors(path, locale)
    if syntax:
        return syntax
    try:
        catalog = _read(path, None)
    except PoFileError as exc:
        if "more translations than num_plurals" in str(exc) and _too_many_forms(path, locale):
            return _too_many_forms(path, locale)
        return [Problem(path, exc.lineno, locale, f"syntax error: {exc.args[0].rsplit(' on ', 1)[0]}: "
                                                  f"{exc.line.strip()!r}")]
    except (UnicodeDecodeError, ValueError) as exc:
        return [Problem(path, 0, locale, f"cannot be read: {exc}")]
    problems: list[Problem] = []
    language = getattr(catalog, "locale_identifier", None) or (str(catalog.locale) if catalog.locale else None)
    if language != locale:
        problems.append(Problem(path, _header_line(path, "Language"), locale,
                                f"the Language header says {language!r}, the folder {locale!r}"))
    if catalog.fuzzy:
        problems.append(Problem(path, 1, locale, "the header is marked `#, fuzzy`: delete that line"))
    for text in plural_rule_errors(locale, catalog.num_plurals, catalog.plural_expr):
        problems.append(Problem(path, _header_line(path, "Plural-Forms"), locale, text))
    messages = list(_entries(catalog))
    written_forms, single_forms = _plural_form_counts(path), _single_number_forms(catalog)
    for message in messages:
        problems.extend(_message_problems(path, locale, catalog, message, written_forms, single_forms))
    if template is not None:
        present = {_key(m) for m in messages}
        wanted = {_key(m) for m in _entries(template)}
        for message in _entries(template):
            if _key(message) not in present:
                problems.append(Problem(
                    template_path or path, message.lineno or 0, locale,
                    f"is missing from {_relative(path, template_path)} (run `keystage i18n update`, "
                    "then translate it)",
                    _first_id(message)))
        for message in messages:
            if _key(message) not in wanted:
                problems.append(Problem(path, message.lineno or 0, locale,
                                        "is not in the template any more (run `keystage i18n update`)",
                                        _first_id(message)))
    return problems


def check(domain_dir: Path, domain: str = DOMAIN, *, locales: Iterable[str] | None = None) -> list[Problem]:
    """Check every catalog under ``domain_dir`` (or only ``locales``) against ``<domain>.pot``.

    Fails on: syntax errors; a Language header that is not the folder's; a fuzzy header or entry;
    a Plural-Forms header whose number or rule disagrees with CLDR; an entry with the wrong
    number of plural forms; placeholders that differ from the original or a form Python
    cannot format; an entry of the template missing or untranslated; an entry the template
    no longer has. Without a template only the catalogs' own soundness is checked.
    """
    domain_dir = Path(domain_dir)
    template_path = domain_dir / f"{domain}.pot"
    problems: list[Problem] = []
    template = None
    if template_path.is_file():
        try:
            template = _read(template_path)
        except PoFileError as exc:
            problems.append(Problem(template_path, exc.lineno, "template", f"syntax error: {exc.line.strip()!r}"))
    paths = catalog_paths(domain_dir, domain)
    if locales:
        unknown = sorted(set(locales) - set(paths))
        for locale in unknown:
            problems.append(Problem(domain_dir / locale / "LC_MESSAGES" / f"{domain}.po", 0, locale,
                                    "no such catalog"))
        paths = {k: v for k, v in paths.items() if k in set(locales)}
    for locale, path in paths.items():
        problems.extend(check_catalog(path, locale, template, template_path))
    return problems


def stats(domain_dir: Path, domain: str = DOMAIN, *, locales: Iterable[str] | None = None) -> list[LocaleStats]:
    """Per catalog: entries of the template translated (not fuzzy, every form filled), fuzzy, missing."""
    domain_dir = Path(domain_dir)
    template = _template(domain_dir, domain)
    wanted = set(locales) if locales else None
    result = []
    for locale, path in catalog_paths(domain_dir, domain).items():
        if wanted is not None and locale not in wanted:
            continue
        catalog = _read(path, None)
        entries = {_key(m): m for m in _entries(catalog)}
        keys = [_key(m) for m in _entries(template)] if template is not None else list(entries)
        translated = fuzzy = missing = 0
        for key in keys:
            message = entries.get(key)
            strings = () if message is None else (
                [message.string] if isinstance(message.string, str) else list(message.string))
            if message is None or not all(strings):
                missing += 1
            elif message.fuzzy:
                fuzzy += 1
            else:
                translated += 1
        result.append(LocaleStats(locale, len(keys), translated, fuzzy, missing))
    return result


__all__ = [
    "I18nToolError", "LocaleStats", "Problem", "catalog_paths", "check", "check_catalog", "cldr_locale",
    "compile_catalogs", "expected_plural_forms", "extract", "guess_domain", "is_pseudo", "plural_rule_errors",
    "pseudo_catalog", "pseudo_translate", "source_root", "stats", "syntax_errors", "update", "write_pseudo",
]
