"""Per-request state of the web faces: locale, translations, request info — derived once, kept on ``g``."""

from __future__ import annotations

from typing import Any

from quart import current_app, g, request

from . import i18n, i18n_format
from .request_info import RequestInfo, from_request

LOCALE_SESSION_KEY = i18n.LOCALE_SESSION_KEY
# {"user": <id>, "locale": <preferred_locale>}, written at login (the executor has the user row
# then), so negotiation needs no database round trip per request.
USER_LOCALE_SESSION_KEY = i18n.USER_LOCALE_SESSION_KEY


def keystage() -> Any:
    return current_app.extensions["keystage"]


def catalogs() -> i18n.Catalogs:
    return current_app.extensions["keystage_catalogs"]


def locale() -> str:
    """Negotiated per request: ?locale= (remembered in the session) → the signed-in user's preference
    → Accept-Language → default → en. At login the user's preference replaces a language picked
    before (executor ``_login``); one picked while signed in wins over the preference."""
    if "locale" in g:
        return str(g.locale)
    cats = catalogs()
    session = g.get("session")
    asked = cats.best([request.args.get("locale")])
    if asked and session is not None:
        if session.get(LOCALE_SESSION_KEY) != asked:
            session[LOCALE_SESSION_KEY] = asked
    chosen = asked or negotiate(cats, session, request.headers.get("Accept-Language"),
                                preferred=g.get("user_locale"))
    g.locale = chosen
    return chosen


def negotiate(cats: i18n.Catalogs, session: Any, accept_language: str | None, *,
              preferred: str | None = None) -> str:
    """The locale chain below ``?locale=``: the session's pick → the signed-in user's preference →
    Accept-Language → default → en. Framework-free, for answers served straight from ASGI too."""
    preferred = preferred or _session_user_locale(session)
    from_session = session.get(LOCALE_SESSION_KEY) if session is not None else None
    return (cats.best([from_session]) or cats.best([preferred]) or cats.best(i18n.accept_language(accept_language))
            or cats.best([cats.default_locale]) or "en")


def _session_user_locale(session: Any) -> str | None:
    """The signed-in user's preferred locale, as remembered in the session at login."""
    if session is None or session.user_id is None:
        return None
    remembered = session.get(USER_LOCALE_SESSION_KEY)
    if isinstance(remembered, dict) and remembered.get("user") == session.user_id:
        value = remembered.get("locale")
        return value if isinstance(value, str) else None
    return None


def translations() -> Any:
    if "translations" not in g:
        g.translations = catalogs().translations(locale())
    return g.translations


def request_info() -> RequestInfo:
    if "request_info" not in g:
        g.request_info = from_request(request, current_app.extensions["keystage_trusted_proxies"], locale())
    return g.request_info


def template_globals() -> dict[str, Any]:
    """What every page template sees: language, direction, gettext callables, date and number
    formatting in the request's locale, the switcher's locales (a pseudo-locale only while in use)."""
    current = locale()
    return {
        "lang": i18n.html_lang(current),
        "dir": i18n.text_direction(current),
        "current_locale": current,
        "available_locales": [(code, i18n.display_name(code)) for code in catalogs().locales
                              if code not in i18n.PSEUDO_LOCALES or code == current],
        **i18n.format_kwargs(translations()),
        **i18n_format.formatters(current),
    }
