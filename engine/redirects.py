"""Where keystage may send a user back to: same-origin paths only (no open redirect)."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_LENGTH = 2048


def safe_next(value: str | None) -> str | None:
    """``value`` if it is a same-origin path (``/...``), else ``None``.

    Refused: absolute URLs, scheme-relative ``//host``, backslash tricks that browsers
    read as ``//`` (``/\\host``), control characters and whitespace, over-long values.
    """
    if not value or len(value) > MAX_LENGTH:
        return None
    if any(ord(ch) < 0x21 or ch == "\x7f" for ch in value) or "\\" in value:
        return None
    if not value.startswith("/") or value.startswith("//"):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value
