"""CSRF tokens: one random token per session, kept server-side in the session data.

A form carries the token in a hidden field; a POST whose token does not match the session's
is refused. Because the token lives only in the server-side session (the cookie holds just the
session id) and the session cookie is SameSite=Lax, another site can neither read nor forge it.
``SessionManager.rotate`` drops the token at login, so a token seen before login is worthless after.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sessions import Session

SESSION_KEY = "_csrf"
FORM_FIELD = "csrf_token"


def csrf_token(session: Session) -> str:
    """The session's token, created on first use (which makes the session worth saving)."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def check_csrf(session: Session, submitted: str | None) -> bool:
    """True when ``submitted`` equals the session's token, compared in constant time.

    False when nothing was submitted or the session has no token yet (never creates one)."""
    expected = session.get(SESSION_KEY)
    if not isinstance(submitted, str) or not submitted or not isinstance(expected, str) or not expected:
        return False
    # Compare bytes: compare_digest refuses non-ASCII str, and a submitted value is attacker-chosen.
    return hmac.compare_digest(expected.encode(), submitted.encode("utf-8", "surrogatepass"))


__all__ = ["FORM_FIELD", "SESSION_KEY", "check_csrf", "csrf_token"]
