"""Checking an authorization request: RFC 6749 4.1.1 / 3.1.2, RFC 7636 (PKCE), OIDC Core 3.1.2.1.

``check_request`` returns one of three things: ``Refused`` (the client or redirect URI cannot be
trusted, so the user sees an error page and is *not* redirected: RFC 6749 4.1.2.1), a
``ClientError`` (a redirect back to the client with ``error=...``), or a ``Pending`` request.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from . import tokens
from .claims import SCOPE_DESCRIPTIONS

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

# RFC 7636 4.1 / 4.2: 43-128 unreserved characters; an S256 challenge is 43 base64url characters.
VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
PROMPTS = frozenset({"none", "login", "consent"})
MAX_PARAM = 2048


@dataclasses.dataclass(frozen=True)
class Refused:
    reason: str


@dataclasses.dataclass(frozen=True)
class ClientError:
    url: str
    error: str = ""
    description: str | None = None


@dataclasses.dataclass
class Pending:
    client_id: str
    application: str
    application_name: str
    redirect_uri: str
    scopes: list[str]
    state: str | None
    nonce: str | None
    code_challenge: str | None
    prompt: list[str]
    max_age: int | None
    login_hint: str | None
    ui_locales: list[str]
    issuer: str
    client: tokens.Client | None = None  # as read for this check; not part of the record

    def as_record(self) -> dict[str, Any]:
        """What the session keeps while the user goes through flows (see keystage.engine.applications)."""
        error = {"state": self.state, "iss": self.issuer}
        return {
            "client_id": self.client_id, "application": self.application, "application_name": self.application_name,
            "redirect_uri": self.redirect_uri, "scopes": self.scopes, "state": self.state, "nonce": self.nonce,
            "code_challenge": self.code_challenge, "prompt": self.prompt, "max_age": self.max_age,
            "login_hint": self.login_hint,
            "descriptions": [SCOPE_DESCRIPTIONS[s] for s in self.scopes if s in SCOPE_DESCRIPTIONS],
            "deny_url": response_url(self.redirect_uri, {"error": "access_denied", **error}),
            "consent_required_url": response_url(self.redirect_uri, {"error": "consent_required", **error}),
            "issuer": self.issuer, "granted": False,
        }


def response_url(redirect_uri: str, params: dict[str, Any]) -> str:
    """``redirect_uri`` with ``params`` added to its query (RFC 6749 4.1.2; ``None`` values left out)."""
    parts = urlsplit(redirect_uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


async def check_request(keystage: Keystage, params: dict[str, str], issuer: str, *,
                        pushed: bool = False, client: tokens.Client | None = None) -> Refused | ClientError | Pending:
    """``pushed``: the parameters came through PAR (RFC 9126), already tied to an authenticated client.
    ``client``: the one with ``params["client_id"]``, just read by the caller."""
    if any(len(v) > MAX_PARAM for v in params.values()):
        return Refused("a parameter is too long")
    client_id = params.get("client_id", "")
    if client is None or client.config.client_id != client_id:
        client = await tokens.find_client(keystage, client_id) if client_id else None
    if client is None or client.application_slug is None:
        return Refused("unknown client, or no application uses it")
    config = client.config
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None:
        strict = [u.url for u in config.redirect_uris if u.matching == "strict"]
        if len(strict) != 1 or len(config.redirect_uris) != 1:
            return Refused("redirect_uri is required")
        redirect_uri = strict[0]
    elif not config.redirect_uri_allowed(redirect_uri):
        return Refused("redirect_uri is not registered")
    state = params.get("state")

    def error(code: str, description: str | None = None) -> ClientError:
        return ClientError(response_url(redirect_uri, {"error": code, "error_description": description,
                                                       "state": state, "iss": issuer}), code, description)

    if params.get("request") or params.get("request_uri"):
        return error("request_not_supported")
    if config.require_pushed_authorization_requests and not pushed:
        return error("invalid_request", "this client must use pushed authorization requests")
    if params.get("response_type") != "code":
        return error("unsupported_response_type")
    if "authorization_code" not in config.grant_types:
        return error("unauthorized_client")
    scopes = list(dict.fromkeys((params.get("scope") or "").split()))
    if not scopes or not set(scopes) <= set(config.scopes):
        return error("invalid_scope")
    if "offline_access" in scopes and ("openid" not in scopes or "refresh_token" not in config.grant_types):
        scopes.remove("offline_access")  # OIDC Core 11: ignored unless it can be honoured
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        if method is not None:
            return error("invalid_request", "code_challenge_method without code_challenge")
        if config.client_type == "public":
            return error("invalid_request", "PKCE (S256) is required")
    elif method != "S256" or not CHALLENGE.match(challenge):
        # RFC 7636 4.3: a missing method means "plain", which we do not accept.
        return error("invalid_request", "code_challenge_method must be S256")
    prompt = (params.get("prompt") or "").split()
    if not set(prompt) <= PROMPTS or ("none" in prompt and len(prompt) > 1):
        return error("invalid_request", "prompt")
    max_age: int | None = None
    if params.get("max_age") not in (None, ""):
        try:
            max_age = int(params["max_age"])
        except ValueError:
            return error("invalid_request", "max_age")
        if max_age < 0:
            return error("invalid_request", "max_age")
        if max_age == 0:  # OIDC Core 3.1.2.1: the same as prompt=login
            max_age = None
            if "none" in prompt:
                return error("login_required")
            prompt = [*prompt, "login"]
    ui_locales = (params.get("ui_locales") or "").split()
    return Pending(
        client_id=config.client_id, application=client.application_slug,
        application_name=client.application_name or client.application_slug, redirect_uri=redirect_uri,
        scopes=scopes, state=state, nonce=params.get("nonce"), code_challenge=challenge, prompt=prompt,
        max_age=max_age, login_hint=params.get("login_hint"),
        ui_locales=ui_locales, issuer=issuer, client=client)
