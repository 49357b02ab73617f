"""Translations: gettext catalogs loaded from ``.po`` files with Babel, and locale negotiation.

Catalogs are read from ``.po`` directly (compiled in memory), so ``pip install`` needs no
build step to have working translations. The kernel's domain is ``keystage``; plugin
domains come through ``register_locales`` and are layered under it, so a plugin can add
strings but never change the kernel's.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.core import get_global
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

log = logging.getLogger("keystage.i18n")
DOMAIN = "keystage"
LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
RTL_LANGUAGES = frozenset({"ar", "he", "fa", "ur", "ps", "yi", "dv", "ckb", "sd", "ug"})
# Generated pseudo-locales (``keystage i18n pseudo``) and the real locale whose CLDR data they
# borrow: Babel does not know ``en_XA``, a private-use region code CLDR reserves for this.
PSEUDO_LOCALES = {"en_XA": "en"}
# Session keys: the locale chosen with ?locale= (kept across logout), and the signed-in
# user's preferred locale, {"user": <id>, "locale": <code>}, written at login.
LOCALE_SESSION_KEY = "locale"
USER_LOCALE_SESSION_KEY = "user_locale"


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it now; it is translated where shown."""
    return message


def parse_locale(value: str | None) -> str | None:
    """Normalise ``de-DE`` / ``de_de`` to ``de_DE``; ``None`` for anything malformed or unknown."""
    if not value or len(value) > 35:
        return None
    return _parse_locale(value)


# Cached (bounded, so hostile headers cannot grow it): Locale.parse costs tens of µs per call.
@functools.lru_cache(maxsize=1024)
def _parse_locale(value: str) -> str | None:
    pseudo = {code.lower(): code for code in PSEUDO_LOCALES}.get(value.strip().replace("-", "_").lower())
    if pseudo:
        return pseudo
    try:
        return str(Locale.parse(value.strip().replace("-", "_")))
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def _compile(po_path: Path, locale: str, domain: str) -> Translations:
    with po_path.open("rb") as handle:
        catalog = read_po(handle, locale=locale, domain=domain)
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return Translations(fp=buffer, domain=domain)


class Catalogs:
    """Every loaded translation, by locale. Built once per process."""

    def __init__(self, sources: Iterable[tuple[str, Path]], default_locale: str = "en") -> None:
        self.default_locale = parse_locale(default_locale) or "en"
        by_locale: dict[str, list[tuple[str, Translations]]] = {}
        for domain, directory in [(DOMAIN, LOCALES_DIR), *sources]:
            directory = Path(directory)
            if not directory.is_dir():
                continue
            for po_path in sorted(directory.glob(f"*/LC_MESSAGES/{domain}.po")):
                locale = parse_locale(po_path.parent.parent.name)
                if locale is None:
                    log.warning("ignoring catalog %s: not a known locale", po_path)
                    continue
                try:
                    by_locale.setdefault(locale, []).append((domain, _compile(po_path, locale, domain)))
                except Exception as exc:  # a broken catalog must not stop the server
                    log.error("cannot load catalog %s: %s", po_path, exc)
        self._translations: dict[str, NullTranslations] = {}
        for locale, items in by_locale.items():
            kernel = [t for d, t in items if d == DOMAIN]
            merged: NullTranslations = kernel[0] if kernel else NullTranslations()
            for domain, translations in items:
                if domain != DOMAIN:
                    # Fallbacks are asked only for messages the kernel catalog lacks.
                    merged.add_fallback(translations)
            self._translations[locale] = merged
        self.locales = sorted({"en", *self._translations})

    def translations(self, locale: str) -> NullTranslations:
        for candidate in fallbacks(locale):
            if candidate in self._translations:
                return self._translations[candidate]
        return NullTranslations()

    def best(self, candidates: Iterable[str | None]) -> str | None:
        """The first candidate we have a catalog for, trying ``de_DE`` then ``de``."""
        for candidate in candidates:
            locale = parse_locale(candidate)
            if locale is None:
                continue
            for option in fallbacks(locale):
                if option in self.locales:
                    return option
        return None


def fallbacks(locale: str) -> list[str]:
    """``zh_Hant_TW`` → ``[zh_Hant_TW, zh_Hant, zh]``; ``zh_TW`` and ``zh_CN`` gain their script from
    CLDR's likely subtags (``zh_Hant``, ``zh_Hans``), so browsers sending ``zh-TW`` reach the
    Traditional catalog. Other locales: ``de_AT`` → ``[de_AT, de]``."""
    return list(_fallbacks(locale))


# Cached (bounded): Locale.parse and the likely-subtags lookup cost ~180 µs, several times a request.
@functools.lru_cache(maxsize=1024)
def _fallbacks(locale: str) -> tuple[str, ...]:
    out = [locale]
    try:
        parsed = Locale.parse(locale)
    except (ValueError, TypeError, UnknownLocaleError):
        return tuple(dict.fromkeys((*out, locale.split("_", 1)[0])))
    script = parsed.script
    if not script:
        likely = get_global("likely_subtags")
        for key in ([f"{parsed.language}_{parsed.territory}"] if parsed.territory else []) + [parsed.language]:
            if key in likely:
                script = Locale.parse(likely[key]).script
                break
    if script:
        out.append(f"{parsed.language}_{script}")
    out.append(parsed.language)
    return tuple(dict.fromkeys(out))


def accept_language(header: str | None) -> list[str]:
    """Locales of an ``Accept-Language`` header, best first (quality values honoured)."""
    if not header:
        return []
    entries: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and tag != "*" and 0 < quality <= 1:
            entries.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(entries)]


def text_direction(locale: str) -> str:
    return "rtl" if locale.split("_", 1)[0] in RTL_LANGUAGES else "ltr"


def html_lang(locale: str) -> str:
    return locale.replace("_", "-")


def format_kwargs(translations: Any) -> dict[str, Any]:
    """Callables for templates: ``_``/``gettext``, ``ngettext``, ``pgettext``."""

    def gettext(message: str, **variables: Any) -> str:
        text = translations.gettext(message)
        return text % variables if variables else text

    def ngettext(singular: str, plural: str, num: int, **variables: Any) -> str:
        return translations.ngettext(singular, plural, num) % {"num": num, **variables}

    def pgettext(context: str, message: str, **variables: Any) -> str:
        text = translations.pgettext(context, message)
        return text % variables if variables else text

    return {"_": gettext, "gettext": gettext, "ngettext": ngettext, "pgettext": pgettext}


@functools.lru_cache(maxsize=256)
def display_name(locale: str) -> str:
    """A locale's name in its own language, for the language switcher. Cached: CLDR lookups for
    every locale of the switcher cost ~0.4 ms, on every page otherwise."""
    if locale in PSEUDO_LOCALES:
        return f"[{locale}]"
    try:
        name = Locale.parse(locale).get_display_name(locale) or locale
    except (ValueError, UnknownLocaleError):
        return locale
    return name[:1].upper() + name[1:]
