"""Pushed authorization requests (RFC 9126): the client posts its authorization request first.

The request is checked like one sent to ``/oauth2/authorize`` (section 2.1), kept in the key-value
store for ``LIFETIME`` seconds under the digest of an unguessable ``request_uri``, and used once:
``/oauth2/authorize?client_id=...&request_uri=...`` takes it out (section 4) and ignores any other
parameter. A client with ``require_pushed_authorization_requests`` may use nothing else.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import TYPE_CHECKING, Any

from . import authorize as authz

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

    from .grants import Answer
    from .tokens import Client

PREFIX = "urn:ietf:params:oauth:request_uri:"
LIFETIME = 60


def _key(request_uri: str) -> str:
    return "oidc_par:" + hashlib.sha256(request_uri.encode()).hexdigest()


async def push(keystage: Keystage, client: Client, form: dict[str, str], issuer: str) -> Answer:
    from .grants import NO_STORE, Answer

    params = {k: v for k, v in form.items() if k not in ("client_secret", "client_assertion",
                                                         "client_assertion_type")}
    params["client_id"] = client.config.client_id
    if "request_uri" in params:  # section 2.1: not allowed here
        return Answer(400, {"error": "invalid_request", "error_description": "request_uri is not allowed"},
                      dict(NO_STORE))
    checked = await authz.check_request(keystage, params, issuer, pushed=True)
    if isinstance(checked, authz.Refused):
        return Answer(400, {"error": "invalid_request", "error_description": checked.reason}, dict(NO_STORE))
    if isinstance(checked, authz.ClientError):
        body = {"error": checked.error}
        if checked.description:
            body["error_description"] = checked.description
        return Answer(400, body, dict(NO_STORE))
    request_uri = PREFIX + secrets.token_urlsafe(32)
    await keystage.kv.set(_key(request_uri), json.dumps(params).encode(), ttl=LIFETIME)
    return Answer(201, {"request_uri": request_uri, "expires_in": LIFETIME}, dict(NO_STORE))


async def take(keystage: Keystage, request_uri: str, client_id: str) -> dict[str, Any] | None:
    """The pushed parameters, once; None when unknown, expired, used, or pushed by another client."""
    key = _key(request_uri)
    raw = await keystage.kv.get(key)
    if raw is None:
        return None
    await keystage.kv.delete(key)
    params = json.loads(raw)
    if not isinstance(params, dict) or params.get("client_id") != client_id:
        return None
    return params
