"""The token endpoint, and signed-in authorization requests, served straight from ASGI in front of
Quart (installed by ``before_serving``).

``POST /oauth2/token`` is the hot path of machine clients (client_credentials every few minutes per
service, refreshes). Through Quart it pays for a request context, the session machinery, before/after
hooks and werkzeug's form parsing: about three times the CPU of the grant itself. Here it reads the
body, parses the form, runs ``endpoints.token_endpoint`` (the same function the Quart route runs) and
writes the JSON answer with the headers every keystage answer carries. Everything else goes on to Quart.

``GET /oauth2/authorize`` from a signed-in browser is the other hot path (every app a user opens
while their SSO session lasts). ``AuthorizeFastPath`` answers it when ``decision.settle`` issues a
code at once, with the session only read; every other case (no session, a flow to run, an error
page, ``?locale=``/``ui_locales``, PAR, a session due for renewal) goes on to the Quart route,
which decides again: nothing is written before a code is.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import errors as oauth_errors

from keystage.engine.app import log_request, request_id_for
from keystage.engine.request_info import from_scope
from keystage.engine.sessions import COOKIE_NAME, store_key
from keystage.engine.web_context import negotiate

from . import authorize as authz
from . import decision, tokens
from .grants import NO_STORE, Answer, _oauth_error, token_endpoint

log = logging.getLogger("keystage.oidc")
PATH = "/oauth2/token"
MAX_BODY = 64 * 1024
HEADERS = [(b"content-type", b"application/json"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
           (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]
HEADERS += [(k.lower().encode(), v.encode()) for k, v in NO_STORE.items()]
# Browser apps (public clients) call the token endpoint from their own origin. No cookie is read here,
# so any origin may: the request is authenticated by its own parameters (secret or PKCE verifier).
CORS = [(b"access-control-allow-origin", b"*")]
PREFLIGHT = [*CORS, (b"access-control-allow-methods", b"POST"),
             (b"access-control-allow-headers", b"authorization, content-type, dpop"), (b"access-control-max-age", b"600")]


class TokenFastPath:
    def __init__(self, inner: Any, app: Any) -> None:
        self.inner = inner
        self.keystage = app.extensions["keystage"]
        self.metrics = app.extensions.get("keystage_metrics")
        self.issuer = str(self.keystage.settings.external_url)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] not in ("POST", "OPTIONS"):
            await self.inner(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": PREFLIGHT})
            await send({"type": "http.response.body", "body": b""})
            return
        started = time.perf_counter()
        authorization = content_type = ""
        dpop = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"dpop":
                dpop = value.decode("latin-1")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                answer: Answer = _oauth_error(oauth_errors.InvalidRequestError("the request is too large"))
                break
            if not message.get("more_body"):
                answer = await self._answer(body, content_type, authorization, dpop)
                break
        payload = json.dumps(answer.body, separators=(",", ":")).encode()
        headers = [*HEADERS, *CORS, (b"content-length", str(len(payload)).encode()),
                   (b"x-request-id", uuid.uuid4().hex.encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items() if k not in NO_STORE]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        if self.metrics is not None:
            self.metrics.observe("POST", answer.status, time.perf_counter() - started)

    async def _answer(self, body: bytes, content_type: str, authorization: str, dpop: str | None) -> Answer:
        if content_type.split(";", 1)[0].strip().lower() != "application/x-www-form-urlencoded":
            return _oauth_error(oauth_errors.InvalidRequestError("send the parameters as a form"))
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(oauth_errors.InvalidRequestError("the form cannot be read"))
        form = dict(pairs)
        if len(form) != len(pairs):  # RFC 6749 3.1/3.2: parameters MUST NOT be repeated
            return _oauth_error(oauth_errors.InvalidRequestError("a parameter is repeated"))
        try:
            return await token_endpoint(self.keystage, self.issuer, form, authorization, dpop=dpop)
        except Exception:  # never a traceback in an answer; the log has it
            log.exception("token endpoint failed")
            return Answer(500, {"error": "server_error"}, dict(NO_STORE))


AUTHORIZE = "/oauth2/authorize"
# Parameters whose handling changes the session (ui_locales, locale) or needs a stored request (PAR).
NOT_HERE = frozenset({"request_uri", "ui_locales", "locale"})


class AuthorizeFastPath:
    def __init__(self, inner: Any, app: Any) -> None:
        self.inner = inner
        self.keystage = app.extensions["keystage"]
        self.sessions = app.extensions["keystage_sessions"]
        self.catalogs = app.extensions["keystage_catalogs"]
        self.proxies = app.extensions["keystage_trusted_proxies"]
        self.metrics = app.extensions.get("keystage_metrics")
        self.headers = [(k.lower().encode(), v.encode()) for k, v in
                        app.extensions["keystage_security_headers"].items()]
        self.issuer = str(self.keystage.settings.external_url)
        # Whether the session store can be read inside the context statement (PostgreSQL, not Redis).
        self.inline = self.sessions.select_sql("$1") is not None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != AUTHORIZE or scope["method"] != "GET":
            await self.inner(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            url = await self._code_url(scope)
        except Exception:  # the Quart route answers (and logs) whatever went wrong here
            log.exception("authorization fast path failed; the route answers instead")
            url = None
        if url is None:
            await self.inner(scope, receive, send)
            return
        request_id = request_id_for(_header(scope, b"x-request-id"))
        headers = [*self.headers, (b"location", url.encode()), (b"cache-control", b"no-store"),
                   (b"vary", b"Cookie"), (b"content-length", b"0"), (b"x-request-id", request_id.encode())]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        duration = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe("GET", 302, duration)
        log_request("GET", AUTHORIZE, 302, duration, request_id)

    async def _code_url(self, scope: Any) -> str | None:
        """The redirect with a code when the signed-in user gets one at once; None: let Quart answer."""
        cookie = _cookie(_header(scope, b"cookie"))
        if cookie is None:
            return None
        try:
            pairs = parse_qsl(scope["query_string"].decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            return None
        params = dict(pairs)
        if len(params) != len(pairs) or NOT_HERE & params.keys():
            return None
        # A session this process has seen is read with the context, in one statement; the row read then
        # decides (it may have ended, or be another's since): the remembered values are only a guess.
        guess = self.sessions.remembered(cookie)
        inline = guess is not None and self.inline
        if guess is None or not inline:
            session = await self.sessions.load(cookie)
            if session.user_id is None:
                return None
            guess = (session.user_id, session.created_at)
        user_id, signed_in_at = guess
        client_id = params.get("client_id", "")
        first = await self._check(params, tokens.remembered_client(self.keystage, client_id))
        draft, version = self._draft(first, user_id, signed_in_at)
        context = await decision.load_context(self.keystage, client_id, user_id, draft=draft, version=version,
                                              session=(self.sessions.select_sql, store_key(cookie)) if inline else None)
        if context is None:
            return None
        if inline:
            session = self.sessions.from_stored(cookie, context.session)
            if (session.user_id, session.created_at) != guess:
                return None
        if self.sessions.due_for_renewal(session):
            return None
        # Checked once when the client is as remembered; again only against a config that changed.
        unchanged = first is not None and first.client is not None and first.client.version == context.client.version
        checked = first if unchanged else await self._check(params, context.client)
        if checked is None:
            return None
        record = checked.as_record()
        record["login_after"] = time.time() if "login" in checked.prompt else 0.0
        locale = negotiate(self.catalogs, session, _header(scope, b"accept-language") or None)
        outcome = await decision.settle(self.keystage, record, user_id=session.user_id,
                                        auth_time=session.created_at, context=context,
                                        request=from_scope(scope, self.proxies, locale))
        return outcome.url if isinstance(outcome, decision.Code) else None


    async def _check(self, params: dict[str, str], client: tokens.Client | None) -> authz.Pending | None:
        """The request checked against ``client`` (no query), or None."""
        if client is None:
            return None
        checked = await authz.check_request(self.keystage, params, self.issuer, client=client)
        return checked if isinstance(checked, authz.Pending) else None

    @staticmethod
    def _draft(checked: authz.Pending | None, user_id: int, signed_in_at: float) -> tuple[tokens.CodeDraft | None, str]:
        """The code this request gets if all goes as usual, for ``load_context`` to store in its statement;
        none when the session is not fresh enough for it (prompt=login, max_age)."""
        if checked is None or checked.client is None or "login" in checked.prompt or \
                (checked.max_age is not None and time.time() - signed_in_at > checked.max_age):
            return None, ""
        draft = tokens.draft_code(checked.client, user_id=user_id, redirect_uri=checked.redirect_uri,
                                  scope=" ".join(checked.scopes), nonce=checked.nonce,
                                  code_challenge=checked.code_challenge, auth_time=signed_in_at)
        return draft, checked.client.version


def _header(scope: Any, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _cookie(header: str) -> str | None:
    """The session cookie's value, if the Cookie header holds exactly one."""
    found = [v for k, _, v in (part.strip().partition("=") for part in header.split(";")) if k == COOKIE_NAME]
    return found[0] if len(found) == 1 else None
