"""The token endpoint (RFC 6749 3.2, 4.1.3, 4.4, 6; RFC 8628 3.4; RFC 9449 5), framework-free.

``token_endpoint`` takes the form, the Authorization header and the DPoP header and returns an
``Answer`` (status, JSON body, headers): ``fastpath.py`` serves it straight from ASGI, the Quart route
in ``endpoints.py`` serves the same function. Client authentication for every endpoint is here too.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from authlib.oauth2.rfc6749 import errors as oauth_errors
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from . import authorize as authz
from . import claims as claims_module
from . import rfc8628, rfc9449, tokens

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclasses.dataclass
class Answer:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


def _oauth_error(error: oauth_errors.OAuth2Error, *, basic: bool = False) -> Answer:
    body = {"error": error.error}
    if error.description:
        body["error_description"] = error.description
    headers = dict(NO_STORE)
    if error.status_code == 401 and basic:
        headers["WWW-Authenticate"] = 'Basic realm="keystage"'
    return Answer(error.status_code, body, headers)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    if not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        client_id, secret = decoded.split(":", 1)
    except (ValueError, UnicodeDecodeError):
        return ("", "")
    # RFC 6749 2.3.1: both are form-urlencoded before being joined.
    return unquote_plus(client_id), unquote_plus(secret)


async def _authenticate_client(keystage: Any, form: Mapping[str, str], authorization: str,
                               db: Any = None) -> tokens.Client | oauth_errors.OAuth2Error:
    basic = _basic_credentials(authorization)
    if "client_assertion" in form or "client_assertion_type" in form:
        return await _authenticate_with_assertion(keystage, form, basic, db)
    if basic is not None and ("client_secret" in form):
        return oauth_errors.InvalidRequestError("use one client authentication method")
    if basic is not None:
        client_id, secret = basic
        if form.get("client_id") not in (None, client_id):
            return oauth_errors.InvalidRequestError("client_id does not match the credentials")
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
    if not client_id:
        return oauth_errors.InvalidClientError(status_code=401)
    client = await tokens.find_client(keystage, client_id, db)
    if client is None:
        return oauth_errors.InvalidClientError(status_code=401)
    if client.config.client_type == "public":
        if secret:
            return oauth_errors.InvalidClientError(status_code=401)
    elif not client.config.check_secret(secret):
        return oauth_errors.InvalidClientError(status_code=401)
    return client


async def _authenticate_with_assertion(keystage: Any, form: Mapping[str, str], basic: Any,
                                       db: Any) -> tokens.Client | oauth_errors.OAuth2Error:
    """private_key_jwt (RFC 7523 2.2): the assertion is the only credential."""
    from . import rfc7523

    assertion = form.get("client_assertion", "")
    if basic is not None or "client_secret" in form or form.get("client_assertion_type") != rfc7523.ASSERTION_TYPE \
            or not assertion:
        return oauth_errors.InvalidRequestError("client_assertion_type or client_assertion")
    client_id = rfc7523.unverified_issuer(assertion)
    if not client_id or form.get("client_id") not in (None, client_id):
        return oauth_errors.InvalidClientError(status_code=401)
    client = await tokens.find_client(keystage, client_id, db)
    base = keystage.settings.external_url.rstrip("/")
    # The audience is the endpoint the assertion is sent to; the issuer is accepted too (OIDC Core 9).
    audiences = {keystage.settings.external_url, f"{base}/oauth2/token", f"{base}/oauth2/par",
                 f"{base}/oauth2/introspect", f"{base}/oauth2/revoke"}
    if client is None or client.config.client_type != "confidential" or \
            not await rfc7523.verify(keystage, client, assertion, audiences):
        return oauth_errors.InvalidClientError(status_code=401)
    return client


async def token_endpoint(keystage: Any, issuer_url: str, form: Mapping[str, str], authorization: str,
                         request_info: Any = None, dpop: str | None = None) -> Answer:
    """RFC 6749 3.2 / 4.1.3 / 4.4 / 6: one token request, answered. ``dpop``: the DPoP header (RFC 9449)."""
    jkt = None
    if dpop is not None:
        jkt = await rfc9449.verify(keystage, dpop, method="POST", url=issuer_url.rstrip("/") + "/oauth2/token")
        if jkt is None:
            return Answer(400, {"error": "invalid_dpop_proof"}, dict(NO_STORE))
    if form.get("grant_type") == "client_credentials" and jkt is None:
        # The hot path. A client this process knows: a JWT needs no query while nothing was announced
        # to have changed since the client was read (engine/changes.py); an opaque token is one
        # statement that checks the client's config as it stores the token. Otherwise one pooled
        # connection for both statements of the ordinary path.
        known = _known_client_credentials_client(keystage, form, authorization)
        if known is not None and known.config.access_token_format != "opaque" and keystage.changes.fresh(known.mark):
            result = await _client_credentials_grant(keystage, issuer_url, known, form, None)
            return _oauth_error(result) if isinstance(result, oauth_errors.OAuth2Error) else \
                Answer(200, result.as_json(), dict(NO_STORE))
        async with keystage.pool.acquire() as conn:
            if known is not None and known.config.access_token_format == "opaque":
                issued = await tokens.issue_opaque_if_unchanged(conn, known, grant_id=secrets.token_urlsafe(16),
                                                                scope=" ".join((form.get("scope") or "").split()))
                if issued is not None:
                    return Answer(200, issued.as_json(), dict(NO_STORE))
            return await _token_endpoint(keystage, issuer_url, form, authorization, request_info, conn)
    return await _token_endpoint(keystage, issuer_url, form, authorization, request_info, None, jkt)


def _known_client_credentials_client(keystage: Any, form: Mapping[str, str], authorization: str) -> Any:
    """The client of a client_credentials request that this process has read before, when the request
    is one the ordinary path would grant to it as read (Basic credentials that match, the grant and the
    scopes allowed); None sends the request down the ordinary path, which answers every error."""
    basic = _basic_credentials(authorization)
    if basic is None or "client_secret" in form or form.get("client_id") not in (None, basic[0]):
        return None
    client = tokens.remembered_client(keystage, basic[0])
    if client is None or "client_credentials" not in client.config.grant_types or \
            not client.config.check_secret(basic[1]):
        return None
    asked = (form.get("scope") or "").split()
    if not set(asked) <= set(client.config.scopes) - {"openid", "offline_access"}:
        return None
    return client


async def _quick_public_code_grant(keystage: Any, issuer_url: str, form: Mapping[str, str], authorization: str,
                                   request_info: Any, jkt: str | None) -> Answer | None:
    """The code grant of a public client this process has read before, in one round trip: the code is
    redeemed (and its tokens stored) only if the client's config is still what was read. None sends
    the request down the ordinary path, which answers every error."""
    if authorization or {"client_secret", "client_assertion", "client_assertion_type"} & form.keys():
        return None
    client = tokens.remembered_client(keystage, form.get("client_id", ""))
    if client is None or client.config.client_type != "public" or \
            "authorization_code" not in client.config.grant_types:
        return None
    result = await _code_grant(keystage, issuer_url, client, form, request_info, jkt, if_unchanged=True)
    if result is None:
        return None
    if isinstance(result, oauth_errors.OAuth2Error):
        return _oauth_error(result)
    return Answer(200, result.as_json(), dict(NO_STORE))


async def _token_endpoint(keystage: Any, issuer_url: str, form: Mapping[str, str], authorization: str,
                          request_info: Any, db: Any, jkt: str | None = None) -> Answer:
    if form.get("grant_type") == "authorization_code" and form.get("code"):
        quick = await _quick_public_code_grant(keystage, issuer_url, form, authorization, request_info, jkt)
        if quick is not None:
            return quick
    client = await _authenticate_client(keystage, form, authorization, db)
    if isinstance(client, oauth_errors.OAuth2Error):
        return _oauth_error(client, basic=bool(authorization))
    grant_type = form.get("grant_type", "")
    if grant_type not in ("authorization_code", "refresh_token", "client_credentials", rfc8628.GRANT_TYPE):
        return _oauth_error(oauth_errors.UnsupportedGrantTypeError(grant_type))
    if grant_type not in client.config.grant_types:
        return _oauth_error(oauth_errors.UnauthorizedClientError())
    if grant_type == "authorization_code":
        result = await _code_grant(keystage, issuer_url, client, form, request_info, jkt)
    elif grant_type == "refresh_token":
        result = await _refresh_grant(keystage, issuer_url, client, form, request_info, jkt)
    elif grant_type == rfc8628.GRANT_TYPE:
        result = await _device_grant(keystage, issuer_url, client, form, request_info, jkt)
    else:
        result = await _client_credentials_grant(keystage, issuer_url, client, form, db, jkt)
    if isinstance(result, oauth_errors.OAuth2Error):
        return _oauth_error(result)
    return Answer(200, result.as_json(), dict(NO_STORE))


async def _code_grant(keystage: Any, issuer_url: str, client: tokens.Client, form: Mapping[str, str],
                      request_info: Any, jkt: str | None = None, *, if_unchanged: bool = False) -> Any:
    """RFC 6749 4.1.3. ``if_unchanged``: ``client`` is as this process last read it (see
    ``_quick_public_code_grant``); None then means "take the ordinary path", and nothing was touched."""
    code = form.get("code", "")
    if not code:
        return oauth_errors.InvalidRequestError("code is missing")
    # RFC 6749 4.1.3: the same redirect_uri; it may be left out only where it could be left out of the
    # authorization request (a single registered URI).
    sole = [u.url for u in client.config.redirect_uris] if len(client.config.redirect_uris) == 1 else []
    redirect_uri = form.get("redirect_uri", sole[0] if sole else None)
    verifier = form.get("code_verifier")
    good_verifier = bool(verifier) and authz.VERIFIER.match(verifier) is not None
    # What the stored challenge must be for the tokens to be stored with the code's redemption: "" (never
    # a challenge) for a malformed verifier, None for none.
    challenge = create_s256_code_challenge(verifier) if good_verifier else ("" if verifier else None)
    minted = tokens.mint(client.config, with_refresh="refresh_token" in client.config.grant_types)
    redeemed = await tokens.redeem_code(keystage, code, client, minted, redirect_uri=redirect_uri,
                                        challenge=challenge, jkt=jkt, if_unchanged=if_unchanged)
    if redeemed is None:
        return None if if_unchanged else oauth_errors.InvalidGrantError()
    row, user = redeemed
    refused = _refuse_code(row, client, redirect_uri, verifier, good_verifier)
    if refused is not None:
        if (row["previously_used"] and row["provider_id"] == client.provider_id) or row["stored"]:
            # RFC 6749 4.1.2: a code used twice revokes what was issued from it.
            await tokens.revoke_grant(keystage, row["grant_id"])
        return refused
    scopes = row["scope"].split()
    if "offline_access" not in scopes:
        minted.refresh = None
    stored = row["stored"] == len(minted.rows(client.config))
    if row["stored"] and not stored:  # the statement and the checks above disagree: start over, safely
        await tokens.revoke_grant(keystage, row["grant_id"])
        return oauth_errors.InvalidGrantError()
    id_claims = None
    if "openid" in scopes:
        id_claims = await claims_module.user_claims(keystage, user, scopes, client.config, request_info)
        if row["nonce"]:
            id_claims["nonce"] = row["nonce"]
    return await tokens.issue(
        keystage, client, issuer=issuer_url, grant_id=row["grant_id"], subject=str(row["user_id"]),
        user_id=row["user_id"], scope=row["scope"], auth_time=row["auth_time"],
        with_refresh=minted.refresh is not None, id_claims=id_claims, jkt=jkt, minted=minted, stored=stored)


def _refuse_code(row: Any, client: tokens.Client, redirect_uri: str | None, verifier: str | None,
                 good_verifier: bool) -> oauth_errors.OAuth2Error | None:
    """Why a redeemed code gives nothing (RFC 6749 4.1.3, RFC 7636 4.6), or None."""
    if row["provider_id"] != client.provider_id:
        # Another client's code is not revoked by this: it may be an honest mistake of the other one.
        return oauth_errors.InvalidGrantError()
    if row["previously_used"] or row["expired"] or not row["is_active"]:
        return oauth_errors.InvalidGrantError()
    if redirect_uri != row["redirect_uri"]:
        return oauth_errors.InvalidGrantError("redirect_uri does not match")
    if row["code_challenge"] is not None:
        if not good_verifier or not hmac.compare_digest(create_s256_code_challenge(verifier or ""),
                                                         row["code_challenge"]):
            return oauth_errors.InvalidGrantError("code_verifier does not match")
    elif verifier:
        return oauth_errors.InvalidGrantError("no code_challenge was sent for this code")
    return None


async def _refresh_grant(keystage: Any, issuer_url: str, client: tokens.Client, form: Mapping[str, str],
                         request_info: Any, jkt: str | None = None) -> Any:
    refresh = form.get("refresh_token", "")
    if not refresh:
        return oauth_errors.InvalidRequestError("refresh_token is missing")
    rotate = client.config.refresh_token_rotation
    row = await tokens.redeem_refresh(keystage, refresh, rotate=rotate, jkt=jkt)
    if row is None or row["provider_id"] != client.provider_id:
        return oauth_errors.InvalidGrantError()
    if row["dpop_jkt"] is not None and row["dpop_jkt"] != jkt:
        # RFC 9449 5: a bound refresh token needs a proof with the same key (and was left untouched).
        return oauth_errors.OAuth2Error(error="invalid_dpop_proof", status_code=400)
    if row["previously_used"] and rotate:
        # A rotated refresh token came back: someone has a copy. Revoke the whole grant.
        await tokens.revoke_grant(keystage, row["grant_id"])
        return oauth_errors.InvalidGrantError()
    if row["revoked"] or row["expired"] or not row["is_active"]:
        return oauth_errors.InvalidGrantError()
    granted = row["scope"].split()
    asked = form.get("scope")
    scopes = granted if asked is None else asked.split()
    if not set(scopes) <= set(granted):
        return oauth_errors.InvalidScopeError()
    user = await keystage.users.get(row["user_id"])
    id_claims = None
    if "openid" in scopes:
        id_claims = await claims_module.user_claims(keystage, user, scopes, client.config, request_info)
    return await tokens.issue(
        keystage, client, issuer=issuer_url, grant_id=row["grant_id"], subject=str(row["user_id"]),
        user_id=row["user_id"], scope=" ".join(scopes), auth_time=row["auth_time"], with_refresh=rotate,
        id_claims=id_claims, jkt=jkt or row["dpop_jkt"])


async def _client_credentials_grant(keystage: Any, issuer_url: str, client: tokens.Client,
                                    form: Mapping[str, str], db: Any, jkt: str | None = None) -> Any:
    asked = (form.get("scope") or "").split()
    allowed = set(client.config.scopes) - {"openid", "offline_access"}
    if not set(asked) <= allowed:
        return oauth_errors.InvalidScopeError()
    return await tokens.issue(
        keystage, client, issuer=issuer_url, grant_id=secrets.token_urlsafe(16), subject=client.config.client_id,
        user_id=None, scope=" ".join(asked), auth_time=None, with_refresh=False, id_claims=None, db=db, jkt=jkt)


async def _device_grant(keystage: Any, issuer_url: str, client: tokens.Client, form: Mapping[str, str],
                        request_info: Any, jkt: str | None = None) -> Any:
    device_code = form.get("device_code", "")
    if not device_code:
        return oauth_errors.InvalidRequestError("device_code is missing")
    polled = await rfc8628.poll(keystage, client, device_code)
    if polled.outcome == "invalid_grant":
        return oauth_errors.InvalidGrantError()
    if polled.outcome != "approved":
        return oauth_errors.OAuth2Error(error=polled.outcome, status_code=400)
    user = await keystage.users.get(polled.user_id)
    if user is None or not user.is_active:
        return oauth_errors.InvalidGrantError()
    scopes = polled.scope.split()
    id_claims = None
    if "openid" in scopes:
        id_claims = await claims_module.user_claims(keystage, user, scopes, client.config, request_info)
    return await tokens.issue(
        keystage, client, issuer=issuer_url, grant_id=secrets.token_urlsafe(16), subject=str(user.id),
        user_id=user.id, scope=polled.scope, auth_time=polled.auth_time,
        with_refresh="offline_access" in scopes and "refresh_token" in client.config.grant_types,
        id_claims=id_claims, jkt=jkt)
