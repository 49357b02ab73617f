"""HTTP glue of the OIDC provider: discovery, JWKS, authorize, token, userinfo, introspection, revocation,
end-session, PAR, device authorization and the /device page.

The protocol decisions (what is valid, what is issued) are in ``authorize.py``, ``grants.py``,
``tokens.py``, ``claims.py`` and the modules named after their RFC; this module reads requests and
writes answers.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import errors as oauth_errors
from quart import Blueprint, Response, g, jsonify, redirect, render_template, request

from keystage.engine import applications, i18n, web_context
from keystage.engine.flows import slug_for_designation

from . import authorize as authz
from . import claims as claims_module
from . import decision, par, rfc8628, rfc9449, tokens
from .grants import NO_STORE, Answer, _authenticate_client, _oauth_error, token_endpoint
from .keys import keyring

oidc_routes = Blueprint("keystage_oidc", __name__)
# Read by browser apps from their own origin with a bearer token or the client's own credentials,
# never with keystage's cookies: any origin may (the token endpoint: fastpath.py).
CORS_PATHS = frozenset({"/oauth2/userinfo", "/oauth2/revoke"})


@oidc_routes.after_request
async def _cors(response: Response) -> Response:
    if request.path in CORS_PATHS:
        response.headers["Access-Control-Allow-Origin"] = "*"
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Headers"] = "authorization, content-type, dpop"
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def issuer() -> str:
    # The issuer is KEYSTAGE_EXTERNAL_URL exactly (see docs/admin/oidc.md for the trailing-slash rule).
    return str(web_context.keystage().settings.external_url)


def _base() -> str:
    return issuer().rstrip("/")


@oidc_routes.get("/.well-known/openid-configuration")
async def discovery() -> Any:
    base = _base()
    body = {
        "issuer": issuer(),
        "authorization_endpoint": f"{base}/oauth2/authorize",
        "token_endpoint": f"{base}/oauth2/token",
        "userinfo_endpoint": f"{base}/oauth2/userinfo",
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "revocation_endpoint": f"{base}/oauth2/revoke",
        "end_session_endpoint": f"{base}/oauth2/end-session",
        "pushed_authorization_request_endpoint": f"{base}/oauth2/par",
        "require_pushed_authorization_requests": False,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "jwks_uri": f"{base}/oauth2/jwks",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", rfc8628.GRANT_TYPE],
        "device_authorization_endpoint": f"{base}/oauth2/device",
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt",
                                                  "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "groups", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name", "preferred_username",
                             "locale", "email", "email_verified", "groups"],
        "prompt_values_supported": ["none", "login", "consent"],
        "dpop_signing_alg_values_supported": list(rfc9449.ALGORITHMS),
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
    }
    response = jsonify(body)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@oidc_routes.get("/oauth2/jwks")
async def jwks() -> Any:
    response = jsonify(await keyring(web_context.keystage()).jwks())
    # Short: a rotated key is published ahead of use by more than this (keystage keys rotate).
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


# -- authorize ------------------------------------------------------------------------------------


async def _error_page(status: int = 400) -> Any:
    t = web_context.translations()
    message = t.gettext("This sign-in request is not valid. Please go back to the application and try again.")
    body = await render_template("access_denied.html", **web_context.template_globals(), flow={},
                                 challenge={"message": message}, messages=[])
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _denied_page() -> Any:
    t = web_context.translations()
    message = t.gettext("You are not allowed to use this application.")
    body = await render_template("access_denied.html", **web_context.template_globals(), flow={},
                                 challenge={"message": message}, messages=[])
    response = Response(body, status=403, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


@oidc_routes.route("/oauth2/authorize", methods=["GET", "POST"])
async def authorize() -> Any:
    keystage = web_context.keystage()
    params = dict((await request.form) if request.method == "POST" else request.args)
    pushed = False
    if "request_uri" in params:
        stored = await par.take(keystage, params["request_uri"], params.get("client_id", ""))
        if stored is None:
            return await _error_page()
        params, pushed = stored, True
    checked = await authz.check_request(keystage, params, issuer(), pushed=pushed)
    if isinstance(checked, authz.Refused):
        return await _error_page()
    if isinstance(checked, authz.ClientError):
        return redirect(checked.url, 302)
    pending = checked
    if pending.ui_locales:  # feeds the locale chain like ?locale= would
        best = web_context.catalogs().best(pending.ui_locales)
        if best:
            g.session[i18n.LOCALE_SESSION_KEY] = best
    request_id = secrets.token_urlsafe(16)
    record = pending.as_record()
    # prompt=login: only a sign-in that happens from now on counts (session created_at moves at login).
    record["login_after"] = time.time() if "login" in pending.prompt else 0.0
    return await _continue(request_id, record, client=pending.client)


@oidc_routes.get("/oauth2/authorize/continue")
async def authorize_continue() -> Any:
    request_id = request.args.get("r", "")
    record = applications.pending_authorizations(g.session).get(request_id)
    if record is None:
        return await _error_page()
    return await _continue(request_id, record)


async def _continue(request_id: str, record: dict[str, Any], *, client: tokens.Client | None = None) -> Any:
    """Go on with an authorization request (``decision.settle`` says how). The session keeps ``record``
    only while a flow runs for it (``_remember`` before sending the user to one): a request answered at
    once, the signed-in user's usual case, leaves the session as it was and costs no session write."""
    keystage = web_context.keystage()
    outcome = await decision.settle(keystage, record, user_id=g.session.user_id, auth_time=g.session.created_at,
                                    request=web_context.request_info(), client=client)
    continue_url = f"/oauth2/authorize/continue?{urlencode({'r': request_id})}"
    if isinstance(outcome, decision.SignIn):
        if outcome.slug is None:
            return await _error_page(503)
        _remember(request_id, record)
        query = {"next": continue_url, "restart": "1"}
        if record.get("login_hint"):
            query["login_hint"] = record["login_hint"]  # prefills the identification stage
        return redirect(f"/flows/{outcome.slug}/?{urlencode(query)}", 302)
    if isinstance(outcome, decision.Consent):
        if outcome.slug is None:
            return await _error_page(503)
        _remember(request_id, record)
        return redirect(f"/flows/{outcome.slug}/?{urlencode({'next': continue_url, 'restart': '1'})}", 302)
    _forget(request_id)
    if isinstance(outcome, decision.Invalid):
        return await _error_page()
    if isinstance(outcome, decision.Denied):
        return await _denied_page()
    if isinstance(outcome, decision.DeviceApproved):
        return await _device_page(web_context.translations().gettext(
            "Your device is signed in. You can close this page."))
    return redirect(outcome.url, 302)  # Code or Redirect


def _remember(request_id: str, record: dict[str, Any]) -> None:
    """Keep (or update) the request in the session while a flow runs for it."""
    applications.add_pending_authorization(g.session, request_id, record)


def _forget(request_id: str) -> None:
    pending = applications.pending_authorizations(g.session)
    if request_id in pending:
        pending.pop(request_id)
        g.session.modified = True


# -- token ------------------------------------------------------------------------------------------
#
# The token, introspection and revocation endpoints are framework-free (``token_endpoint`` takes the
# form and the Authorization header and returns status, body and headers): ``fastpath.py`` serves
# the token endpoint straight from ASGI, the Quart routes below serve the same function.


def _quart_answer(answer: Answer) -> Response:
    response = jsonify(answer.body) if answer.body is not None else Response("")
    response.status_code = answer.status
    response.headers.update(answer.headers)
    return response


async def _form() -> dict[str, str] | None:
    """The request's form; None when a parameter is repeated (RFC 6749 3.1/3.2: MUST NOT)."""
    form = await request.form
    if any(len(values) > 1 for values in form.listvalues()):
        return None
    return form.to_dict()


async def _authenticated_client(keystage: Any) -> tuple[Any, dict[str, str]] | Any:
    """``(client, form)`` for an endpoint clients call with their credentials (introspection,
    revocation, PAR, device authorization), or the RFC 6749 error answer to return."""
    form = await _form()
    if form is None:
        return _quart_answer(_oauth_error(oauth_errors.InvalidRequestError("a parameter is repeated")))
    authorization = request.headers.get("Authorization", "")
    client = await _authenticate_client(keystage, form, authorization)
    if isinstance(client, oauth_errors.OAuth2Error):
        return _quart_answer(_oauth_error(client, basic=bool(authorization)))
    return client, form


@oidc_routes.post("/oauth2/token")
async def token() -> Any:
    form = await _form()
    if form is None:
        return _quart_answer(_oauth_error(oauth_errors.InvalidRequestError("a parameter is repeated")))
    return _quart_answer(await token_endpoint(web_context.keystage(), issuer(), form,
                                              request.headers.get("Authorization", ""), web_context.request_info(),
                                              request.headers.get("DPoP")))


# -- userinfo ---------------------------------------------------------------------------------------


def _bearer_error(error: str, status: int) -> Response:
    response = jsonify({"error": error})
    response.status_code = status
    response.headers["WWW-Authenticate"] = f'Bearer error="{error}"' if error != "missing" else "Bearer"
    response.headers.update(NO_STORE)
    return response


@oidc_routes.route("/oauth2/userinfo", methods=["GET", "POST"])
async def userinfo() -> Any:
    keystage = web_context.keystage()
    header = request.headers.get("Authorization", "")
    scheme, _, access_token = header.partition(" ")
    if scheme.lower() not in ("bearer", "dpop") or not access_token.strip():
        return _bearer_error("invalid_request" if header else "missing", 401 if not header else 400)
    access_token = access_token.strip()
    await keyring(keystage).refresh()
    row = await tokens.find_access_token(keystage, access_token, issuer())
    if row is None or row["user_id"] is None:
        return _bearer_error("invalid_token", 401)
    # RFC 9449 7: a bound token only with the DPoP scheme and a proof by its key; an unbound one as Bearer.
    if row["dpop_jkt"] is not None:
        proof = request.headers.get("DPoP")
        jkt = await rfc9449.verify(keystage, proof, method=request.method, url=_base() + "/oauth2/userinfo",
                                   access_token=access_token) if proof and scheme.lower() == "dpop" else None
        if jkt != row["dpop_jkt"]:
            return _bearer_error("invalid_token", 401)
    elif scheme.lower() != "bearer":
        return _bearer_error("invalid_token", 401)
    client = await tokens.find_client(keystage, row["client_id"])
    user = await keystage.users.get(row["user_id"])
    if client is None or user is None:
        return _bearer_error("invalid_token", 401)
    scopes = row["scope"].split()
    if "openid" not in scopes:
        return _bearer_error("insufficient_scope", 403)
    body = {"sub": str(user.id),
            **await claims_module.user_claims(keystage, user, scopes, client.config, web_context.request_info())}
    response = jsonify(body)
    response.headers.update(NO_STORE)
    return response


# -- introspection (RFC 7662) and revocation (RFC 7009) -------------------------------------------


@oidc_routes.post("/oauth2/introspect")
async def introspect() -> Any:
    keystage = web_context.keystage()
    authenticated = await _authenticated_client(keystage)
    if not isinstance(authenticated, tuple):
        return authenticated
    client, form = authenticated
    if client.config.client_type != "confidential":
        return _quart_answer(_oauth_error(oauth_errors.UnauthorizedClientError()))
    token = form.get("token", "")
    if not token:
        return _quart_answer(_oauth_error(oauth_errors.InvalidRequestError("token is missing")))
    await keyring(keystage).refresh()
    found = await tokens.find_token(keystage, token, issuer(), kinds=("access", "refresh"))
    body: dict[str, Any] = {"active": False}
    # A client learns about its own tokens only (a resource server is a client of its own).
    if isinstance(found, dict):
        if found.get("client_id") == client.config.client_id:
            body = {"active": True, "client_id": found["client_id"], "sub": found["sub"], "scope": found["scope"],
                    "exp": found["exp"], "iat": found["iat"], "iss": issuer(), "token_type": "Bearer"}
            if isinstance(found.get("cnf"), dict):
                body["cnf"], body["token_type"] = found["cnf"], "DPoP"
    elif found is not None and found["provider_id"] == client.provider_id:
        body = {"active": True, "client_id": found["client_id"], "scope": found["scope"], "exp": found["exp"],
                "iat": found["iat"], "iss": issuer(),
                "token_type": "Bearer" if found["kind"] == "access" else "refresh_token",
                "sub": str(found["user_id"]) if found["user_id"] is not None else found["client_id"]}
        if found["username"]:
            body["username"] = found["username"]
        if found["dpop_jkt"]:
            body["cnf"] = {"jkt": found["dpop_jkt"]}  # RFC 9449 6.2
            body["token_type"] = "DPoP"
    response = jsonify(body)
    response.headers.update(NO_STORE)
    return response


@oidc_routes.post("/oauth2/revoke")
async def revoke() -> Any:
    keystage = web_context.keystage()
    authenticated = await _authenticated_client(keystage)
    if not isinstance(authenticated, tuple):
        return authenticated
    client, form = authenticated
    token = form.get("token", "")
    if not token:
        return _quart_answer(_oauth_error(oauth_errors.InvalidRequestError("token is missing")))
    await keyring(keystage).refresh()
    await tokens.revoke(keystage, token, issuer(), client.provider_id)
    # RFC 7009 2.2: 200 whether or not there was such a token.
    return Response("", status=200, headers=NO_STORE)


# -- RP-initiated logout ------------------------------------------------------------------------------


@oidc_routes.route("/oauth2/end-session", methods=["GET", "POST"])
async def end_session() -> Any:
    from .logout import end_session as run

    return await run(issuer())


@oidc_routes.get("/oauth2/end-session/done")
async def end_session_done() -> Any:
    from .logout import end_session_done as run

    return await run()


# -- pushed authorization requests (RFC 9126) ----------------------------------------------------------


@oidc_routes.post("/oauth2/par")
async def pushed_authorization_request() -> Any:
    keystage = web_context.keystage()
    authenticated = await _authenticated_client(keystage)
    if not isinstance(authenticated, tuple):
        return authenticated
    client, form = authenticated
    answer = await par.push(keystage, client, form, issuer())
    return _quart_answer(answer)


# -- device authorization grant (RFC 8628) -----------------------------------------------------------


@oidc_routes.post("/oauth2/device")
async def device_authorization() -> Any:
    keystage = web_context.keystage()
    authenticated = await _authenticated_client(keystage)
    if not isinstance(authenticated, tuple):
        return authenticated
    client, form = authenticated
    if rfc8628.GRANT_TYPE not in client.config.grant_types or client.application_id is None:
        return _quart_answer(_oauth_error(oauth_errors.UnauthorizedClientError()))
    scopes = list(dict.fromkeys((form.get("scope") or "").split()))
    if not scopes or not set(scopes) <= set(client.config.scopes):
        return _quart_answer(_oauth_error(oauth_errors.InvalidScopeError()))
    device_code, user_code = await rfc8628.start(keystage, client, " ".join(scopes))
    base = _base()
    return _quart_answer(Answer(200, {
        "device_code": device_code, "user_code": user_code, "verification_uri": f"{base}/device",
        "verification_uri_complete": f"{base}/device?{urlencode({'code': user_code})}",
        "expires_in": rfc8628.LIFETIME, "interval": rfc8628.INTERVAL}, dict(NO_STORE)))


async def _device_page(message: str | None = None, *, show_form: bool = False, code: str = "",
                       status: int = 200) -> Any:
    from keystage.engine.csrf import csrf_token
    from keystage.engine.templates import render_page

    body = await render_page("plugins.providers.oidc/device.html", message=message, show_form=show_form,
                             code=code, csrf_token=csrf_token(g.session))
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


@oidc_routes.route("/device", methods=["GET", "POST"])
async def device_page() -> Any:
    from keystage.engine.csrf import check_csrf

    keystage = web_context.keystage()
    t = web_context.translations()
    user = await keystage.users.get(g.session.user_id) if g.session.user_id is not None else None
    code = request.args.get("code", "")[:20]
    if user is None or not user.is_active:
        slug = await slug_for_designation(keystage, "authentication")
        if slug is None:
            return await _error_page(503)
        here = "/device" + (f"?{urlencode({'code': code})}" if code else "")
        return redirect(f"/flows/{slug}/?{urlencode({'next': here, 'restart': '1'})}", 302)
    if request.method == "GET":
        return await _device_page(show_form=True, code=code)
    form = await request.form
    if not check_csrf(g.session, form.get("csrf_token")):
        return await _device_page(show_form=True, status=403)
    user_code = rfc8628.normalise(form.get("code", "")[:20])
    row = await rfc8628.pending(keystage, user_code) if user_code else None
    if row is None:
        return await _device_page(t.gettext("This code is not valid or has expired."), show_form=True, status=400)
    client = await tokens.find_client(keystage, row["client_id"])
    if client is None or client.application_slug is None:
        return await _error_page()
    request_id = secrets.token_urlsafe(16)
    denied = f"/device/denied?{urlencode({'r': request_id})}"
    scopes = row["scope"].split()
    record = {
        "client_id": client.config.client_id, "application": client.application_slug,
        "application_name": client.application_name or client.application_slug, "redirect_uri": "",
        "scopes": scopes, "state": None, "nonce": None, "code_challenge": None, "prompt": [], "max_age": None,
        "descriptions": [claims_module.SCOPE_DESCRIPTIONS[s] for s in scopes if s in claims_module.SCOPE_DESCRIPTIONS],
        "deny_url": denied, "consent_required_url": denied, "issuer": issuer(), "granted": False, "login_after": 0.0,
        "device": bytes(row["device_code_hash"]).hex(),
    }
    return await _continue(request_id, record, client=client)


@oidc_routes.get("/device/denied")
async def device_denied() -> Any:
    keystage = web_context.keystage()
    record = applications.pending_authorizations(g.session).pop(request.args.get("r", ""), None)
    g.session.modified = True
    if record is not None and record.get("device"):
        await rfc8628.decide(keystage, bytes.fromhex(record["device"]), user_id=None, auth_time=0.0, approved=False)
    return await _device_page(web_context.translations().gettext("The device was not allowed to sign in."))
