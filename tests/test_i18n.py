"""Localized flows: locale negotiation, translated pages and field errors, right-to-left,
plural rules, and the shipped catalogs themselves (complete, no fuzzy, placeholders intact,
the template up to date with the code)."""

from __future__ import annotations

import gettext
import io
import re
from pathlib import Path
from typing import Any

import pytest
from babel import Locale
from babel.messages.catalog import Catalog
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from keystage.engine import i18n
from keystage.engine.blueprints import apply_defaults

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "locales"
TEMPLATE = LOCALES / "keystage.pot"
# The generated pseudo-locale (en_XA) is checked by tests/test_i18n_check.py and tests/test_pseudo_locale.py.
SHIPPED = sorted(p.parent.parent.name for p in LOCALES.glob("*/LC_MESSAGES/keystage.po")
                 if p.parent.parent.name not in i18n.PSEUDO_LOCALES)
LOGIN = "/flows/default-authentication-flow/"
EXTRACT_ARGS = ["extract", "-F", "babel.cfg", "-k", "N_", "-c", "Translators:", "--project", "keystage",
                "--copyright-holder", "the keystage authors", "-o", "locales/keystage.pot",
                "engine", "stages", "plugins", "web"]
EXTRACT = "keystage i18n extract"  # the same extraction as EXTRACT_ARGS (engine/i18n_tools.py)
UPDATE = "keystage i18n update"
# Python %-conversions: %(name)s, %(num)d, %s, %5.2f ... (%% is a literal percent sign).
CONVERSION = re.compile(r"%(?:\((\w+)\))?[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%]")
CLDR_ORDER = ("zero", "one", "two", "few", "many", "other")


@pytest.fixture
async def app(keystage_app: Any) -> Any:
    ks = keystage_app.extensions["keystage"]
    await apply_defaults(ks)
    await ks.users.create("alice", email="alice@example.com", password="correct horse battery")
    return keystage_app


async def page(client: Any, path: str, accept_language: str | None = None) -> tuple[Any, str]:
    headers = {"Accept": "text/html"}
    if accept_language is not None:
        headers["Accept-Language"] = accept_language
    response = await client.get(path, headers=headers)
    return response, await response.get_data(as_text=True)


def vary(response: Any) -> set[str]:
    return {v.strip().lower() for v in response.headers.get("Vary", "").split(",")}


# -- negotiation -------------------------------------------------------------------------


async def test_unknown_flow_is_a_404_page_in_the_users_language(keystage_client: Any) -> None:
    response, body = await page(keystage_client, "/flows/nope/", "de-DE,de;q=0.9")
    assert response.status_code == 404
    assert '<html lang="de" dir="ltr"' in body
    assert "Seite nicht gefunden" in body and "Zurück zur Startseite" in body
    assert response.headers["Content-Language"] == "de"
    assert "accept-language" in vary(response)


async def test_unknown_flow_in_the_json_face_is_translated_too(keystage_client: Any) -> None:
    response = await keystage_client.get("/api/v1/flows/nope/executor", headers={"Accept-Language": "fr"})
    assert response.status_code == 404
    assert (await response.get_json())["message"] == "Cette page n’existe pas."
    assert response.headers["Content-Language"] == "fr"


@pytest.mark.parametrize(("header", "expected"), [
    ("fr;q=0.5, de;q=0.9", "de"),           # quality values, not order, decide
    ("de;q=0.9, fr", "fr"),                 # no q means q=1
    ("de-AT", "de"),                        # region falls back to the language
    ("es-419, en;q=0.5", "es"),
    ("DE-de", "de"),                        # case does not matter
    ("zz, ar;q=0.1", "ar"),                 # an unknown first choice is skipped
    ("en-US,en;q=0.9,de;q=0.8", "en"),
])
async def test_accept_language(keystage_client: Any, header: str, expected: str) -> None:
    response, body = await page(keystage_client, "/flows/nope/", header)
    assert response.headers["Content-Language"] == expected
    assert f'<html lang="{expected}"' in body


@pytest.mark.parametrize("header", [
    "xx-YY", "*", "garbage;;;q=abc", ",,,,", ";q=0.9", "de;q=0", "de;q=2", "de;q=abc", "ü-ß, 12345",
    "i-klingon", "de-DE-x-", "a" * 5000, "x-" * 3000, ", ".join(["zz"] * 500),
])
async def test_malformed_or_unknown_accept_language_falls_back_to_english(keystage_client: Any, header: str) -> None:
    response, body = await page(keystage_client, "/flows/nope/", header)
    assert response.status_code == 404
    assert response.headers["Content-Language"] == "en"
    assert '<html lang="en" dir="ltr"' in body and "Page not found" in body


async def test_locale_parameter_wins_and_is_remembered(app: Any) -> None:
    client = app.test_client()
    response, body = await page(client, f"{LOGIN}?locale=fr", "de")
    assert response.status_code == 200
    assert '<html lang="fr"' in body and "Nom d’utilisateur ou adresse e-mail" in body
    assert response.headers["Content-Language"] == "fr"
    # The next request has no parameter, and the browser still prefers German: the choice sticks.
    response, body = await page(client, LOGIN, "de")
    assert '<html lang="fr"' in body and response.headers["Content-Language"] == "fr"
    # An unknown ?locale= changes nothing.
    response, body = await page(client, f"{LOGIN}?locale=xx", "de")
    assert response.headers["Content-Language"] == "fr"
    # A new browser without the session gets its Accept-Language.
    response, body = await page(app.test_client(), LOGIN, "de")
    assert '<html lang="de"' in body and "Benutzername oder E-Mail-Adresse" in body


async def test_flow_pages_vary_on_accept_language(app: Any) -> None:
    response, _ = await page(app.test_client(), LOGIN, "es")
    assert response.status_code == 200
    assert "accept-language" in vary(response)
    assert response.headers["Content-Language"] == "es"


async def test_right_to_left(app: Any) -> None:
    response, body = await page(app.test_client(), LOGIN, "ar")
    assert '<html lang="ar" dir="rtl"' in body
    assert "اسم المستخدم أو عنوان البريد الإلكتروني" in body
    _, body = await page(app.test_client(), LOGIN, "en")
    assert '<html lang="en" dir="ltr"' in body
    assert [code for code in ("ar", "he", "fa", "de", "en") if i18n.text_direction(code) == "rtl"] == ["ar", "he", "fa"]


async def test_json_face_field_errors_are_translated(app: Any) -> None:
    client = app.test_client()
    headers = {"Accept-Language": "de-CH, de;q=0.9, en;q=0.5"}
    url = "/api/v1/flows/default-authentication-flow/executor"
    response = await client.get(url, headers=headers)
    challenge = await response.get_json()
    assert challenge["component"] == "identification"
    assert challenge["uid_label"] == "Benutzername oder E-Mail-Adresse"
    assert response.headers["Content-Language"] == "de"
    response = await client.post(url, json={"component": "identification", "uid_field": ""}, headers=headers)
    errors = (await response.get_json())["response_errors"]
    assert errors["uid_field"][0]["code"] == "required"
    assert errors["uid_field"][0]["message"] == "Bitte geben Sie Ihren Benutzernamen oder Ihre E-Mail-Adresse ein."
    await client.post(url, json={"component": "identification", "uid_field": "alice"}, headers=headers)
    response = await client.post(url, json={"component": "password", "password": "wrong"}, headers=headers)
    challenge = await response.get_json()
    assert challenge["component"] == "password"
    assert challenge["response_errors"]["password"] == [
        {"code": "invalid", "message": "Benutzername oder Passwort ist falsch."}]


# -- plural forms ------------------------------------------------------------------------


def _in_memory(locale: str, forms: tuple[str, ...]) -> Translations:
    catalog = Catalog(locale=locale, domain="test")
    catalog.add(("%(num)d file", "%(num)d files"), forms, flags=("python-format",))
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer, domain="test")


@pytest.mark.parametrize(("locale", "forms", "expected"), [
    ("pl", ("%(num)d plik", "%(num)d pliki", "%(num)d plików"),
     {1: "1 plik", 2: "2 pliki", 4: "4 pliki", 5: "5 plików", 12: "12 plików", 22: "22 pliki", 25: "25 plików"}),
    ("ru", ("%(num)d файл", "%(num)d файла", "%(num)d файлов"),
     {1: "1 файл", 2: "2 файла", 5: "5 файлов", 11: "11 файлов", 21: "21 файл", 24: "24 файла", 111: "111 файлов"}),
])
def test_ngettext_plural_rules(locale: str, forms: tuple[str, ...], expected: dict[int, str]) -> None:
    ngettext = i18n.format_kwargs(_in_memory(locale, forms))["ngettext"]
    assert {n: ngettext("%(num)d file", "%(num)d files", n) for n in expected} == expected


def test_arabic_has_six_plural_forms_in_the_shipped_catalog() -> None:
    ngettext = i18n.format_kwargs(i18n.Catalogs([]).translations("ar"))["ngettext"]
    singular, plural = "Please use at most %(num)d character.", "Please use at most %(num)d characters."
    seen = {n: ngettext(singular, plural, n) for n in (0, 1, 2, 3, 10, 11, 99, 100, 102, 103, 111)}
    assert seen[1] == "يُرجى استخدام حرف واحد على الأكثر."
    assert seen[2] == "يُرجى استخدام حرفين على الأكثر."
    assert seen[3] == "يُرجى استخدام 3 أحرف على الأكثر." and seen[103] == "يُرجى استخدام 103 أحرف على الأكثر."
    assert seen[11] == "يُرجى استخدام 11 حرفًا على الأكثر." and seen[111] == "يُرجى استخدام 111 حرفًا على الأكثر."
    assert seen[100] == "يُرجى استخدام 100 حرف على الأكثر." and seen[102] == "يُرجى استخدام 102 حرف على الأكثر."
    assert seen[0] == "يُرجى عدم إدخال أي حرف."


# -- the shipped catalogs ----------------------------------------------------------------


def _read(path: Path) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, abort_invalid=True)


def _key(message: Any) -> tuple[str | None, str | tuple[str, ...]]:
    return message.context, message.id if isinstance(message.id, str) else tuple(message.id)


def _conversions(text: str) -> list[str]:
    return sorted(m.group(0) for m in CONVERSION.finditer(text) if m.group(0) != "%%")


def test_locales_are_shipped() -> None:
    assert {"de", "fr", "es", "ar"} <= set(SHIPPED)
    assert set(SHIPPED) <= set(i18n.Catalogs([]).locales)


@pytest.mark.parametrize("locale", SHIPPED)
def test_catalog_is_complete_and_sound(locale: str) -> None:
    template = {_key(m) for m in _read(TEMPLATE) if m.id}
    catalog = _read(LOCALES / locale / "LC_MESSAGES" / "keystage.po")
    assert str(catalog.locale) == locale, f"the Language header of {locale}/LC_MESSAGES/keystage.po says {catalog.locale}"
    messages = [m for m in catalog if m.id]
    problems = []
    missing = template - {_key(m) for m in messages}
    if missing:
        problems.append(f"missing (run `{UPDATE}`, then translate): {sorted(map(str, missing))}")
    for message in messages:
        where = f"{locale}: {message.id!r}"
        if message.fuzzy:
            problems.append(f"{where} is fuzzy: check the translation and remove the fuzzy flag")
        if _key(message) not in template:
            problems.append(f"{where} is not in the template any more (run `{UPDATE}`)")
        ids = [message.id] if isinstance(message.id, str) else list(message.id)
        strings = [message.string] if isinstance(message.string, str) else list(message.string)
        if len(ids) > 1 and len(strings) != catalog.num_plurals:
            problems.append(f"{where} has {len(strings)} plural forms, the language has {catalog.num_plurals}")
        if not all(strings):
            problems.append(f"{where} is not translated")
            continue
        expected = _conversions(ids[0])
        names = {m.group(1) for m in CONVERSION.finditer(" ".join(ids)) if m.group(1)}
        # A plural form may leave out the count itself ("one character" for n == 1), nothing else.
        without_count = [c for c in expected if not c.startswith("%(num)")] if len(ids) > 1 else expected
        for index, string in enumerate(strings):
            found = _conversions(string)
            if found not in (expected, without_count):
                problems.append(f"{where} form {index}: placeholders {found}, the original has {expected}")
            elif message.python_format:
                try:
                    string % dict.fromkeys(names, 1)
                except (ValueError, TypeError, KeyError) as exc:
                    problems.append(f"{where} form {index}: cannot be formatted ({exc})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("locale", SHIPPED)
def test_plural_rule_matches_cldr(locale: str) -> None:
    """The Plural-Forms header puts CLDR's categories in CLDR's order (Arabic: zero, one, two, few, many, other)."""
    catalog = _read(LOCALES / locale / "LC_MESSAGES" / "keystage.po")
    rule = Locale.parse(locale).plural_form
    numbers = range(1000)
    categories = [c for c in CLDR_ORDER if any(rule(n) == c for n in numbers)]
    assert catalog.num_plurals == len(categories), f"{locale}: nplurals should be {len(categories)} ({categories})"
    plural = gettext.c2py(catalog.plural_expr)
    wrong = [n for n in numbers if plural(n) != categories.index(rule(n))]
    assert not wrong, f"{locale}: the Plural-Forms expression disagrees with CLDR for n in {wrong[:10]}"


def test_template_is_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    fresh = tmp_path / "keystage.pot"
    args = [str(fresh) if arg == "locales/keystage.pot" else arg for arg in EXTRACT_ARGS]
    assert CommandLineInterface().run(["pybabel", "--quiet", *args]) in (0, None)
    extracted = {_key(m) for m in _read(fresh) if m.id}
    shipped = {_key(m) for m in _read(TEMPLATE) if m.id}
    new, gone = sorted(map(str, extracted - shipped)), sorted(map(str, shipped - extracted))
    assert not new and not gone, (
        f"locales/keystage.pot is out of date (new strings: {new}; no longer used: {gone}).\n"
        f"From the repository root run:\n  {EXTRACT}\n  {UPDATE}\n"
        "then translate the new entries in every locales/<lang>/LC_MESSAGES/keystage.po "
        "(see docs/translators.md)."
    )
