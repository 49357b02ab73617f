"""Per-request state of the web faces: locale, translations, request info — derived once, kept on ``g``."""

from __future__ import annotations

from typing import Any

from quart import current_app, g, request

from . import i18n
from .request_info import RequestInfo, from_request

LOCALE_SESSION_KEY = "locale"


def keystage() -> Any:
    return current_app.extensions["keystage"]


def catalogs() -> i18n.Catalogs:
    return current_app.extensions["keystage_catalogs"]


def locale() -> str:
    """Negotiated per request: ?locale= (remembered) → user's preference → session → Accept-Language → default → en."""
    if "locale" in g:
        return str(g.locale)
    cats = catalogs()
    session = g.get("session")
    asked = cats.best([request.args.get("locale")])
    if asked and session is not None:
        if session.get(LOCALE_SESSION_KEY) != asked:
            session[LOCALE_SESSION_KEY] = asked
    preferred = g.get("user_locale")
    from_session = session.get(LOCALE_SESSION_KEY) if session is not None else None
    chosen = (asked or cats.best([preferred]) or cats.best([from_session])
              or cats.best(i18n.accept_language(request.headers.get("Accept-Language")))
              or cats.best([cats.default_locale]) or "en")
    g.locale = chosen
    return chosen


def translations() -> Any:
    if "translations" not in g:
        g.translations = catalogs().translations(locale())
    return g.translations


def request_info() -> RequestInfo:
    if "request_info" not in g:
        g.request_info = from_request(request, current_app.extensions["keystage_trusted_proxies"], locale())
    return g.request_info


def template_globals() -> dict[str, Any]:
    """What every page template sees: language, direction, gettext callables, the switcher's locales."""
    current = locale()
    return {
        "lang": i18n.html_lang(current),
        "dir": i18n.text_direction(current),
        "current_locale": current,
        "available_locales": [(code, i18n.display_name(code)) for code in catalogs().locales],
        **i18n.format_kwargs(translations()),
    }
