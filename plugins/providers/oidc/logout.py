"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): ``/oauth2/end-session``.

The user is signed out by keystage's invalidation flow (the same as the "Sign out" link), then sent
to the client's ``post_logout_redirect_uri`` if it is registered for that client (exact match) and
the client is known from ``id_token_hint`` or ``client_id`` (spec section 3). The session is gone
after the flow, so the return address travels through the flow signed (HMAC with the secret key),
not in the session; anything unsigned or unregistered ends on keystage's own page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

from quart import redirect, request

from keystage.engine import web_context
from keystage.engine.flows import slug_for_designation

from . import tokens
from .authorize import response_url
from .keys import keyring


def _sign(secret: str, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
    mac = hmac.new(secret.encode(), b"end-session." + body, hashlib.sha256).digest()
    return body.decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _unsign(secret: str, value: str) -> dict[str, Any] | None:
    body, _, mac = value.partition(".")
    expected = base64.urlsafe_b64encode(
        hmac.new(secret.encode(), b"end-session." + body.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    if not mac or not hmac.compare_digest(mac, expected):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def end_session(issuer: str) -> Any:
    keystage = web_context.keystage()
    params = dict((await request.form) if request.method == "POST" else request.args)
    client_id = params.get("client_id")
    hint = params.get("id_token_hint")
    if hint:
        await keyring(keystage).refresh()
        claims = await tokens.verify_jwt(keystage, hint, issuer, allow_expired=True)
        if claims is None or (client_id and claims.get("aud") != client_id):
            client_id = None  # an unusable hint: sign out, but send the user nowhere
        else:
            client_id = str(claims.get("aud"))
    target = None
    uri = params.get("post_logout_redirect_uri")
    if uri and client_id:
        client = await tokens.find_client(keystage, client_id)
        if client is not None and uri in client.config.post_logout_redirect_uris:
            target = response_url(uri, {"state": params.get("state")})
    slug = await slug_for_designation(keystage, "invalidation")
    done = "/oauth2/end-session/done"
    if target:
        done += "?" + urlencode({"to": _sign(keystage.settings.secret_key, {"to": target})})
    if slug is None:
        return redirect(done, 302)
    return redirect(f"/flows/{slug}/?{urlencode({'next': done, 'restart': '1'})}", 302)


async def end_session_done() -> Any:
    keystage = web_context.keystage()
    data = _unsign(keystage.settings.secret_key, request.args.get("to", ""))
    return redirect(data["to"] if data and isinstance(data.get("to"), str) else "/", 302)
