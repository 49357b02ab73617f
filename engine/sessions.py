"""Server-side sessions: a random id in a cookie, the data in the key-value store.

The cookie carries only ``secrets.token_urlsafe(32)``; the store key is ``session:`` plus the
SHA-256 of it, so a leaked store dump or Redis ``KEYS`` listing gives no usable cookie. Data is
JSON (never pickle). A session expires ``session_lifetime`` seconds after it was last saved
(``remember_me_lifetime`` when ``remember`` is set); the store TTL follows that expiry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quart import Quart, Response

    from .kv import KeyValueStore
    from .runtime import Keystage

COOKIE_NAME = "keystage_session"
KEY_PREFIX = "session:"
# What secrets.token_urlsafe(32) produces; anything else is rejected before touching the store.
_ID = re.compile(r"[A-Za-z0-9_-]{43}")
# Assigning these marks the session for saving; `modified` and the timestamps are bookkeeping.
_TRACKED = frozenset({"data", "user_id", "remember"})
_MISSING = object()
# How many signed-in sessions a process remembers (``SessionManager.remembered``): a hint, ~200 bytes each.
REMEMBERED = 10_000


@dataclasses.dataclass
class Session:
    """One browser's session. Changing ``data`` through the item methods, or assigning
    ``data``/``user_id``/``remember``, sets ``modified``; code that mutates a nested value in
    place (``session["list"].append(x)``) must set ``modified = True`` itself."""

    id: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    user_id: int | None = None
    remember: bool = False
    created_at: float = 0.0
    expires_at: float = 0.0
    modified: bool = False

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _TRACKED:
            # During __init__ this runs before `modified` is assigned, which then wins.
            object.__setattr__(self, "modified", True)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.modified = True

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            self.modified = True
            return self.data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default

    @property
    def empty(self) -> bool:
        """True when there is nothing worth storing."""
        return not self.data and self.user_id is None and not self.remember


def store_key(session_id: str) -> str:
    """The key-value store key of a raw session id."""
    return KEY_PREFIX + hashlib.sha256(session_id.encode("ascii")).hexdigest()


class SessionManager:
    """Loads, saves, rotates and destroys sessions in ``keystage.kv``."""

    def __init__(self, keystage: Keystage) -> None:
        self._keystage = keystage
        self._settings = keystage.settings
        # store key -> (user id, signed in at) of sessions this process has read or written. A session's
        # id changes at sign-in (``rotate``), so neither value changes while its row exists.
        self._remembered: dict[str, tuple[int, float]] = {}

    @property
    def _kv(self) -> KeyValueStore:
        # Looked up on each use: the store only exists once the runtime is open.
        return self._keystage.kv

    def lifetime(self, session: Session) -> int:
        return self._settings.remember_me_lifetime if session.remember else self._settings.session_lifetime

    async def load(self, cookie_value: str | None) -> Session:
        """The session of ``cookie_value``; a fresh empty one for anything unknown, expired or malformed."""
        if not isinstance(cookie_value, str) or not _ID.fullmatch(cookie_value):
            return Session()
        return self.from_stored(cookie_value, await self._kv.get(store_key(cookie_value)))

    def from_stored(self, cookie_value: str, raw: bytes | None) -> Session:
        """The session of ``cookie_value`` from its stored value (read by ``load``, or by a caller's own
        statement with ``select_sql``); a fresh empty one for anything unknown, expired or malformed."""
        if raw is None or not _ID.fullmatch(cookie_value):
            return Session()
        try:
            stored = json.loads(raw)
            session = Session(
                id=cookie_value,
                data=stored["d"],
                user_id=stored["u"],
                remember=stored["r"],
                created_at=float(stored["c"]),
                expires_at=float(stored["e"]),
            )
        except (ValueError, TypeError, KeyError):
            return Session()  # not ours or corrupted: treat like no session rather than fail the request
        if (
            not isinstance(session.data, dict)
            or not (session.user_id is None or (isinstance(session.user_id, int) and not isinstance(session.user_id, bool)))
            or not isinstance(session.remember, bool)
            or session.expires_at <= time.time()
        ):
            return Session()
        self._remember(session)
        return session

    def _remember(self, session: Session) -> None:
        if session.id is None:
            return
        key = store_key(session.id)
        if session.user_id is None:
            self._remembered.pop(key, None)
            return
        if key not in self._remembered and len(self._remembered) >= REMEMBERED:
            del self._remembered[next(iter(self._remembered))]  # the oldest
        self._remembered[key] = (session.user_id, session.created_at)

    def remembered(self, cookie_value: str | None) -> tuple[int, float] | None:
        """(user id, signed in at) of the signed-in session ``cookie_value`` names, as this process last
        read or wrote it; None when it does not know it. Only a hint (the session may have ended since):
        read the session with ``select_sql`` in the same statement and check it with ``from_stored``."""
        if not isinstance(cookie_value, str) or not _ID.fullmatch(cookie_value):
            return None
        return self._remembered.get(store_key(cookie_value))

    def select_sql(self, key_param: str) -> str | None:
        """SQL for the stored value of the session whose ``store_key`` is passed as ``key_param``, to read
        inside another statement; None when the store cannot (Redis): then use ``load``."""
        select = getattr(self._kv, "select_sql", None)
        return select(key_param) if select is not None else None

    def due_for_renewal(self, session: Session) -> bool:
        # A session that is only read would otherwise die `lifetime` after login even while in use;
        # renewing once past half its life keeps active users in at one write per half-lifetime.
        return session.id is not None and session.expires_at - time.time() < self.lifetime(session) / 2

    async def save(self, session: Session) -> str | None:
        """Persist ``session`` if it changed (or is due for renewal) and return the id to send in
        the cookie; None when there is nothing to send. A fresh session with nothing in it is
        not stored, so requests that only read stay cookieless."""
        if not session.modified and not self.due_for_renewal(session):
            return None
        if session.id is None and session.empty:
            session.modified = False
            return None
        now = time.time()
        lifetime = self.lifetime(session)
        if session.id is None:
            session.id = secrets.token_urlsafe(32)
            session.created_at = now
        session.expires_at = now + lifetime
        payload = json.dumps(
            {"d": session.data, "u": session.user_id, "r": session.remember,
             "c": session.created_at, "e": session.expires_at},
            separators=(",", ":"),
        ).encode()
        await self._kv.set(store_key(session.id), payload, ttl=lifetime)
        session.modified = False
        self._remember(session)
        return session.id

    async def rotate(self, session: Session) -> None:
        """Give ``session`` a new id and delete the old one (at login: no session fixation).

        The CSRF token is dropped too, so a token seen before login is useless after it;
        the new session is written by the next ``save``."""
        if session.id is not None:
            self._remembered.pop(store_key(session.id), None)
            await self._kv.delete(store_key(session.id))
        session.id = secrets.token_urlsafe(32)
        session.created_at = time.time()
        session.data.pop("_csrf", None)
        session.modified = True

    async def destroy(self, session: Session) -> None:
        """Log out: delete the session from the store and empty the object."""
        if session.id is not None:
            self._remembered.pop(store_key(session.id), None)
            await self._kv.delete(store_key(session.id))
        session.id = None
        session.data = {}
        session.user_id = None
        session.remember = False
        session.created_at = session.expires_at = 0.0
        session.modified = False

    def cookie_kwargs(self, session: Session) -> dict[str, Any]:
        """Keyword arguments for ``response.set_cookie(COOKIE_NAME, id, **kwargs)``.

        Without ``remember`` the cookie has no Max-Age, so the browser drops it when it closes."""
        return {
            "httponly": True,
            "samesite": "Lax",
            "secure": self._settings.secure_cookies,
            "path": "/",
            "max_age": self._settings.remember_me_lifetime if session.remember else None,
        }


def install(app: Quart) -> None:
    """Give every request ``g.session`` and persist it afterwards. Idempotent.

    A request without the cookie gets a fresh session without touching the store, and
    a response only carries ``Set-Cookie`` when the session was saved, or deleted/found invalid.
    """
    from quart import g, request

    if "keystage_sessions" in app.extensions:
        return
    manager = SessionManager(app.extensions["keystage"])
    app.extensions["keystage_sessions"] = manager

    @app.before_request
    async def _load_session() -> None:
        cookie = request.cookies.get(COOKIE_NAME)
        g.session = await manager.load(cookie) if cookie else Session()

    @app.after_request
    async def _save_session(response: Response) -> Response:
        session: Session | None = g.get("session")
        if session is None:  # before_request did not run (e.g. it failed earlier)
            return response
        session_id = await manager.save(session)
        if session_id is not None:
            response.set_cookie(COOKIE_NAME, session_id, **manager.cookie_kwargs(session))
        elif session.id is None and COOKIE_NAME in request.cookies:
            # Logged out, expired or garbage: tell the browser to stop sending it.
            kwargs = manager.cookie_kwargs(session)
            response.delete_cookie(COOKIE_NAME, path="/", secure=kwargs["secure"],
                                   httponly=True, samesite="Lax")
        else:
            return response
        # The answer depends on the cookie: shared caches must not serve it to someone else.
        response.vary.add("Cookie")
        return response


__all__ = ["COOKIE_NAME", "Session", "SessionManager", "install", "store_key"]
