"""Dates, numbers and plurals through Babel/CLDR, the template helpers that expose them, and the
signed-in user's preferred locale in negotiation."""

from __future__ import annotations

import datetime
import io
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.support import Translations
from quart import g

from keystage.engine import i18n, i18n_format, i18n_tools, web_context
from keystage.engine.blueprints import apply_defaults
from keystage.engine.sessions import Session

WHEN = datetime.datetime(2026, 11, 23, 18, 31, 5, tzinfo=datetime.UTC)
NNBSP, NBSP = "\u202f", "\xa0"

# -- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(("locale", "number", "percent", "date"), [
    ("en", "1,234,567.891", "25%", "Nov 23, 2026"),
    ("de", "1.234.567,891", f"25{NBSP}%", "23.11.2026"),
    ("fr", f"1{NNBSP}234{NNBSP}567,891", f"25{NBSP}%", "23 nov. 2026"),
    ("pt_BR", "1.234.567,891", "25%", "23 de nov. de 2026"),
    ("ja", "1,234,567.891", "25%", "2026/11/23"),
    ("en_XA", "1,234,567.891", "25%", "Nov 23, 2026"),  # a pseudo-locale formats like its base
])
def test_numbers_and_dates_follow_cldr(locale: str, number: str, percent: str, date: str) -> None:
    helpers = i18n_format.formatters(locale)
    assert helpers["format_number"](1234567.891) == number
    assert helpers["format_percent"](0.25) == percent
    assert helpers["format_date"](WHEN) == date


def test_datetime_time_and_durations() -> None:
    assert i18n_format.format_datetime(WHEN, locale="de") == "23.11.2026, 18:31:05"
    assert i18n_format.format_datetime(WHEN, "short", locale="en") == "11/23/26, 6:31\u202fPM"
    # Naive datetimes are UTC; a tzinfo converts.
    naive = WHEN.replace(tzinfo=None)
    assert i18n_format.format_time(naive, locale="de") == "18:31"
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert i18n_format.format_time(WHEN, locale="de", tzinfo=plus_two) == "20:31"
    assert i18n_format.format_timedelta(180, locale="de") == "3 Minuten"
    assert i18n_format.format_timedelta(datetime.timedelta(hours=1), locale="fr") == f"1{NBSP}heure"
    assert i18n_format.format_number(2.5, locale="de", decimals=2) == "2,50"
    assert i18n_format.format_number(None, locale="de") == ""
    # An unknown code falls back to English rather than failing a page.
    assert i18n_format.format_number(1234.5, locale="xx_YY") == "1,234.5"


def test_plural_durations_use_the_languages_forms() -> None:
    assert [i18n_format.format_timedelta(60 * n, locale="pl") for n in (1, 2, 5, 22)] == [
        "1 minuta", "2 minuty", "5 minut", "22 minuty"]
    assert [i18n_format.format_timedelta(60 * n, locale="ru") for n in (1, 3, 11, 21)] == [
        "1 минута", "3 минуты", "11 минут", "21 минута"]


async def test_templates_get_the_helpers_in_the_requests_locale(keystage_app: Any) -> None:
    async with keystage_app.test_request_context("/flows/x/?locale=de"):
        g.session = Session()
        context = web_context.template_globals()
        assert context["format_number"](1234.5) == "1.234,5"
        assert context["format_datetime"](WHEN) == "23.11.2026, 18:31:05"
        rendered = await keystage_app.jinja_env.from_string(
            "{{ format_number(1234.5) }} | {{ format_date(when, 'long') }}").render_async(**context, when=WHEN)
        assert rendered == "1.234,5 | 23. November 2026"
    async with keystage_app.test_request_context("/flows/x/", headers={"Accept-Language": "ar"}):
        g.session = Session()
        context = web_context.template_globals()
        assert context["dir"] == "rtl"
        assert context["format_timedelta"](180) == "3 دقائق"


# -- plural forms with ngettext ----------------------------------------------------------------

# The Plural-Forms headers docs/translators.md gives (Arabic: GNU's, CLDR's order).
HEADERS = {
    "pl": "nplurals=3; plural=(n==1 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);",
    "ru": "nplurals=3; plural=(n%10==1 && n%100!=11 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);",
    "ar": "nplurals=6; plural=(n==0 ? 0 : n==1 ? 1 : n==2 ? 2 : n%100>=3 && n%100<=10 ? 3 : n%100>=11 ? 4 : 5);",
}


def _translations(locale: str, forms: tuple[str, ...]) -> Translations:
    catalog = Catalog(locale=locale, domain="test")
    nplurals, expression = HEADERS[locale].split(";", 1)
    catalog._num_plurals = int(nplurals.split("=")[1])  # noqa: SLF001  (what the .po header says)
    catalog._plural_expr = expression.strip().removeprefix("plural=").rstrip(";")  # noqa: SLF001
    catalog.add(("%(num)d file", "%(num)d files"), forms, flags=("python-format",))
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer, domain="test")


@pytest.mark.parametrize(("locale", "forms", "expected"), [
    ("pl", ("%(num)d plik", "%(num)d pliki", "%(num)d plików"),
     {0: "0 plików", 1: "1 plik", 2: "2 pliki", 4: "4 pliki", 5: "5 plików", 12: "12 plików", 14: "14 plików",
      21: "21 plików", 22: "22 pliki", 104: "104 pliki", 112: "112 plików"}),
    ("ru", ("%(num)d файл", "%(num)d файла", "%(num)d файлов"),
     {0: "0 файлов", 1: "1 файл", 2: "2 файла", 5: "5 файлов", 11: "11 файлов", 21: "21 файл", 24: "24 файла",
      101: "101 файл", 111: "111 файлов", 112: "112 файлов"}),
    ("ar", ("لا ملفات", "ملف واحد", "ملفان", "%(num)d ملفات", "%(num)d ملفًا", "%(num)d ملف"),
     {0: "لا ملفات", 1: "ملف واحد", 2: "ملفان", 3: "3 ملفات", 10: "10 ملفات", 11: "11 ملفًا", 99: "99 ملفًا",
      100: "100 ملف", 102: "102 ملف", 103: "103 ملفات", 111: "111 ملفًا", 200: "200 ملف"}),
])
def test_ngettext_picks_the_cldr_form(locale: str, forms: tuple[str, ...], expected: dict[int, str]) -> None:
    ngettext = i18n.format_kwargs(_translations(locale, forms))["ngettext"]
    assert {n: ngettext("%(num)d file", "%(num)d files", n) for n in expected} == expected


@pytest.mark.parametrize("locale", sorted(HEADERS))
def test_the_documented_headers_agree_with_cldr(locale: str) -> None:
    nplurals, expression = HEADERS[locale].split(";", 1)
    expression = expression.strip().removeprefix("plural=").rstrip(";")
    assert i18n_tools.plural_rule_errors(locale, int(nplurals.split("=")[1]), expression) == []
    # ... and the check notices an Arabic rule that swaps "many" and "other" (Babel before 2.19
    # shipped one).
    if locale == "ar":
        swapped = "(n == 0 ? 0 : n == 1 ? 1 : n == 2 ? 2 : n % 100 >= 3 && n % 100 <= 10 ? 3 : n % 100 >= 11 && n % 100 <= 99 ? 5 : 4)"
        assert i18n_tools.plural_rule_errors("ar", 6, swapped)


def test_the_docs_give_the_checked_headers() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parent.parent / "docs" / "translators.md").read_text("utf-8")
    for header in HEADERS.values():
        assert header.replace("||", "\\|\\|") in docs


# -- the user's preferred locale -------------------------------------------------------------------


async def test_the_signed_in_users_preference_wins_over_accept_language(keystage_app: Any) -> None:
    kernel = keystage_app.extensions["keystage"]
    await apply_defaults(kernel)
    user = await kernel.users.create("marie", email="marie@example.com", password="correct horse battery")
    await kernel.pool.execute("UPDATE users SET preferred_locale = 'fr' WHERE id = $1", user.id)
    client = keystage_app.test_client()
    headers = {"Accept": "text/html", "Accept-Language": "de"}
    login = "/flows/default-authentication-flow/"

    response = await client.get(f"{login}?locale=es", headers=headers)
    response = await client.get(login, headers=headers)
    assert response.headers["Content-Language"] == "es"  # picked before signing in, remembered
    api = "/api/v1/flows/default-authentication-flow/executor"
    await client.get(api)
    await client.post(api, json={"component": "identification", "uid_field": "marie"})
    challenge = await (await client.post(api, json={"component": "password",
                                                    "password": "correct horse battery"})).get_json()
    if challenge["component"] == "user_login":
        challenge = await (await client.post(api, json={"component": "user_login"})).get_json()
    assert challenge["component"] == "redirect", challenge

    response = await client.get("/", headers=headers)
    body = await response.get_data(as_text=True)
    # The account's language replaces what was picked before signing in (and Accept-Language).
    assert response.headers["Content-Language"] == "fr" and '<html lang="fr"' in body
    # An explicit ?locale= still wins, and is remembered ...
    response = await client.get(f"{login}?locale=ar", headers=headers)
    assert response.headers["Content-Language"] == "ar"
    response = await client.get("/", headers=headers)
    assert response.headers["Content-Language"] == "ar"
    # ... and survives signing out, as a choice of this browser.
    await client.get("/flows/default-invalidation-flow/", headers=headers)
    response = await client.get(login, headers=headers)
    assert response.headers["Content-Language"] == "ar"


async def test_a_preference_remembered_for_another_user_is_ignored(keystage_app: Any) -> None:
    async with keystage_app.test_request_context("/", headers={"Accept-Language": "es"}):
        g.session = Session(user_id=7, data={i18n.USER_LOCALE_SESSION_KEY: {"user": 8, "locale": "fr"}})
        assert web_context.locale() == "es"
    async with keystage_app.test_request_context("/", headers={"Accept-Language": "es"}):
        g.session = Session(user_id=8, data={i18n.USER_LOCALE_SESSION_KEY: {"user": 8, "locale": "fr"}})
        assert web_context.locale() == "fr"
