"""Dates, times and numbers in a locale's conventions (Babel's CLDR data), for templates and emails.

``formatters(locale)`` returns the callables every page template gets (through
``web_context.template_globals``)::

    {{ format_datetime(user.last_login_at) }}     23 nov. 2026, 18:31:05  (fr)
    {{ format_date(d, "long") }}                  23. November 2026       (de)
    {{ format_number(1234.5) }}                   1.234,5                 (de)
    {{ format_percent(0.25) }}                    25 %                    (fr)
    {{ format_timedelta(seconds) }}               3 Minuten               (de)

Times are shown in UTC unless a ``tzinfo`` is passed: keystage does not know the visitor's
time zone. A pseudo-locale formats like its base language.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from babel import Locale, UnknownLocaleError, dates, numbers

from .i18n import PSEUDO_LOCALES

UTC = datetime.UTC


@lru_cache(maxsize=256)
def babel_locale(locale: str) -> Locale:
    """The Babel ``Locale`` for a negotiated locale code (``en`` when Babel does not know it)."""
    try:
        return Locale.parse(PSEUDO_LOCALES.get(locale, locale))
    except (ValueError, TypeError, UnknownLocaleError):
        return Locale.parse("en")


def _aware(value: datetime.datetime, tzinfo: datetime.tzinfo | None) -> datetime.datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(tzinfo or UTC)


def format_datetime(value: datetime.datetime | None, format: str = "medium", *, locale: str,
                    tzinfo: datetime.tzinfo | None = None) -> str:
    if value is None:
        return ""
    aware = _aware(value, tzinfo)
    return dates.format_datetime(aware, format, tzinfo=aware.tzinfo, locale=babel_locale(locale))


def format_date(value: datetime.date | datetime.datetime | None, format: str = "medium", *, locale: str,
                tzinfo: datetime.tzinfo | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        value = _aware(value, tzinfo).date()
    return dates.format_date(value, format, locale=babel_locale(locale))


def format_time(value: datetime.datetime | datetime.time | None, format: str = "short", *, locale: str,
                tzinfo: datetime.tzinfo | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime):
        value = _aware(value, tzinfo)
        return dates.format_time(value, format, tzinfo=value.tzinfo, locale=babel_locale(locale))
    return dates.format_time(value, format, locale=babel_locale(locale))


def format_number(value: float | int | None, *, locale: str, decimals: int | None = None) -> str:
    """``1234.5`` → ``1,234.5`` (en), ``1.234,5`` (de), ``1 234,5`` (fr); ``decimals`` fixes the digits."""
    if value is None:
        return ""
    if decimals is None:
        return numbers.format_decimal(value, locale=babel_locale(locale))
    pattern = "#,##0" + ("." + "0" * decimals if decimals > 0 else "")
    return numbers.format_decimal(value, format=pattern, locale=babel_locale(locale))


def format_percent(value: float | None, *, locale: str) -> str:
    if value is None:
        return ""
    return numbers.format_percent(value, locale=babel_locale(locale))


def format_timedelta(value: datetime.timedelta | float | int | None, *, locale: str,
                     granularity: str = "second", add_direction: bool = False) -> str:
    """``timedelta(minutes=3)`` or ``180`` (seconds) → ``3 minutes`` / ``3 Minuten`` / ``3 دقائق``."""
    if value is None:
        return ""
    return dates.format_timedelta(value, granularity=granularity, add_direction=add_direction,
                                  locale=babel_locale(locale))


def formatters(locale: str) -> dict[str, Callable[..., str]]:
    """The template helpers bound to ``locale``."""

    def bind(function: Callable[..., str]) -> Callable[..., str]:
        def bound(*args: Any, **kwargs: Any) -> str:
            kwargs.setdefault("locale", locale)
            return function(*args, **kwargs)

        bound.__name__ = function.__name__
        return bound

    return {f.__name__: bind(f) for f in (format_datetime, format_date, format_time, format_number,
                                          format_percent, format_timedelta)}


__all__ = ["babel_locale", "format_date", "format_datetime", "format_number", "format_percent",
           "format_time", "format_timedelta", "formatters"]
