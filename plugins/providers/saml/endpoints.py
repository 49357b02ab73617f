"""HTTP glue of the SAML provider: metadata, SSO (Redirect and POST bindings, IdP-initiated), SLO.

Protocol decisions live in ``messages`` (what a request must be), ``sso``, ``slo`` and
``attributes``; this module reads requests, walks the user through sign-in and the authorization
flow, and writes answers. A refused request is logged for the admin with its reason and answered
with a translated page that says nothing more than that the request is not valid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from quart import Blueprint, Response, g, redirect, request
from saml2.metadata import entity_descriptor, sign_entity_descriptor
from saml2.samlp import STATUS_NO_PASSIVE, STATUS_REQUEST_DENIED

from keystage.engine import applications, web_context
from keystage.engine.flows import load_flow, slug_for_designation
from keystage.engine.templates import render_page

from . import attributes, service_providers, slo, sso
from .config import DIGEST_ALGORITHMS, SIGNATURE_ALGORITHMS
from .messages import Refused
from .server import SigningUnavailable

log = logging.getLogger("keystage.saml")
ALGSUPPORT = "urn:oasis:names:tc:SAML:metadata:algsupport"
saml_routes = Blueprint("keystage_saml", __name__)
SLO_STATE_TTL = 600
# The bindings allow 80 bytes; SPs send page URLs. It travels in the session and back in a form.
MAX_RELAY_STATE = 2048


def _params_problem(params: Any) -> str | None:
    if any(len(values) > 1 for values in params.listvalues()):
        return "a parameter given twice"
    if len(params.get("RelayState") or "") > MAX_RELAY_STATE:
        return f"RelayState longer than {MAX_RELAY_STATE} characters"
    return None


async def _page(template: str, status: int = 200, **context: Any) -> Response:
    body = await render_page(f"plugins.providers.saml/{template}", **context)
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _message_page(message: str, status: int) -> Response:
    from quart import render_template

    body = await render_template("access_denied.html", **web_context.template_globals(), flow={},
                                 challenge={"message": message}, messages=[])
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


async def _invalid(reason: str, slug: str, status: int = 400) -> Response:
    log.warning("SAML request for application %s refused: %s", slug, reason)
    return await _message_page(web_context.translations().gettext(
        "This sign-in request is not valid. Please go back to the application and try again."), status)


async def _find(slug: str) -> service_providers.ServiceProvider | Response:
    try:
        found = await service_providers.find(web_context.keystage(), slug)
    except SigningUnavailable as exc:
        log.error("SAML provider of application %s cannot sign: %s", slug, exc)
        return await _message_page(web_context.translations().gettext(
            "Signing in to this application is not possible at the moment. Please try again later."), 503)
    if found is None:
        from quart import abort

        abort(404)
    return found


# -- metadata ---------------------------------------------------------------------------------------


@saml_routes.get("/saml/<slug>/metadata")
async def metadata(slug: str) -> Any:
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    cache: dict[int, tuple[Any, str]] = web_context.keystage().state.setdefault("saml_metadata", {})
    cached = cache.get(sp.provider_id)
    if cached is None or cached[0] is not sp.server:
        document = await asyncio.to_thread(_signed_metadata, sp)
        cache[sp.provider_id] = cached = (sp.server, document)
    response = Response(cached[1], content_type="application/samlmetadata+xml; charset=utf-8")
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Content-Disposition"] = f'inline; filename="{slug}-idp-metadata.xml"'
    return response


def _signed_metadata(sp: service_providers.ServiceProvider) -> str:
    descriptor = entity_descriptor(sp.server.config)
    # pysaml2 advertises every algorithm xmlsec1 knows (MD5 and SHA-1 among them): say only what
    # this provider signs with and accepts.
    accepted = sp.config.accepted_signature_algorithms() | {DIGEST_ALGORITHMS[sp.config.digest_algorithm]}
    if sp.config.allow_sha1:
        accepted.add(DIGEST_ALGORITHMS["sha1"])
    if descriptor.extensions is not None:
        descriptor.extensions.extension_elements = [
            e for e in descriptor.extensions.extension_elements
            if e.namespace != ALGSUPPORT or e.attributes.get("Algorithm") in accepted]
    _, xml = sign_entity_descriptor(descriptor, None, sp.server.sec,
                                    sign_alg=SIGNATURE_ALGORITHMS[sp.config.signature_algorithm],
                                    digest_alg=DIGEST_ALGORITHMS[sp.config.digest_algorithm])
    return str(xml)


# -- single sign-on -----------------------------------------------------------------------------


@saml_routes.route("/saml/<slug>/sso", methods=["GET", "POST"])
async def single_sign_on(slug: str) -> Any:
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    params = (await request.form) if request.method == "POST" else request.args
    problem = _params_problem(params) or (None if params.get("SAMLRequest") else "no SAMLRequest")
    if problem:
        return await _invalid(problem, slug)
    try:
        authn = await sso.parse_authn_request(
            sp, web_context.keystage().kv, binding="post" if request.method == "POST" else "redirect",
            saml_request=params["SAMLRequest"], relay_state=params.get("RelayState"),
            sigalg=params.get("SigAlg"), signature=params.get("Signature"))
    except Refused as exc:
        return await _invalid(str(exc), slug)
    return await _start(sp, authn)


@saml_routes.get("/saml/<slug>/sso/init")
async def idp_initiated(slug: str) -> Any:
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    if not sp.config.idp_initiated:
        return await _invalid("IdP-initiated sign-in is turned off for this provider", slug)
    problem = _params_problem(request.args)
    if problem:
        return await _invalid(problem, slug)
    relay_state = request.args.get("RelayState", sp.config.default_relay_state)
    return await _start(sp, sso.AuthnRequest(id=None, acs_url=sp.config.acs_urls[0], relay_state=relay_state))


async def _start(sp: service_providers.ServiceProvider, authn: sso.AuthnRequest) -> Any:
    request_id = secrets.token_urlsafe(16)
    config = sp.config
    scopes = attributes.consent_scopes(config)
    record = {
        "protocol": "saml", "application": sp.application.slug, "application_name": sp.application.name,
        "scopes": scopes, "descriptions": [attributes.DESCRIPTIONS.get(s) for s in scopes
                                           if s in attributes.DESCRIPTIONS],
        "prompt": ["none"] if authn.is_passive else (["login"] if authn.force_authn else []),
        "saml": {"id": authn.id, "acs_url": authn.acs_url, "relay_state": authn.relay_state},
        # ForceAuthn: only a sign-in from now on counts.
        "login_after": time.time() if authn.force_authn else 0.0,
    }
    base = f"/saml/{sp.application.slug}/sso"
    record["deny_url"] = f"{base}/denied?{urlencode({'r': request_id})}"
    record["consent_required_url"] = record["deny_url"]
    applications.add_pending_authorization(g.session, request_id, record)
    return await _continue(sp, request_id)


@saml_routes.get("/saml/<slug>/sso/continue")
async def sso_continue(slug: str) -> Any:
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    return await _continue(sp, request.args.get("r", ""))


@saml_routes.get("/saml/<slug>/sso/denied")
async def sso_denied(slug: str) -> Any:
    """Where the authorization flow sends a user who refused (or could not be asked): the SP hears
    RequestDenied when it asked, the user sees why when the sign-in began here."""
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    record = _take(request.args.get("r", ""), sp)
    if record is None:
        return await _invalid("unknown or finished sign-in", slug)
    authn = _authn(record)
    if authn.id is None:
        return await _denied_page()
    return await _post_error(sp, authn, STATUS_REQUEST_DENIED, "The user may not use this application")


def _authn(record: dict[str, Any]) -> sso.AuthnRequest:
    saml = record["saml"]
    return sso.AuthnRequest(id=saml["id"], acs_url=saml["acs_url"], relay_state=saml["relay_state"])


def _take(request_id: str, sp: service_providers.ServiceProvider) -> dict[str, Any] | None:
    record = applications.pending_authorizations(g.session).get(request_id)
    if record is None or record.get("protocol") != "saml" or record.get("application") != sp.application.slug:
        return None
    applications.pending_authorizations(g.session).pop(request_id, None)
    g.session.modified = True
    return record


async def _denied_page() -> Response:
    return await _message_page(web_context.translations().gettext("You are not allowed to use this application."),
                               403)


async def _continue(sp: service_providers.ServiceProvider, request_id: str) -> Any:
    keystage = web_context.keystage()
    slug = sp.application.slug
    record = applications.pending_authorizations(g.session).get(request_id)
    if record is None or record.get("protocol") != "saml" or record.get("application") != slug:
        return await _invalid("unknown or finished sign-in", slug)
    passive = "none" in record["prompt"]
    user = await keystage.users.get(g.session.user_id) if g.session.user_id is not None else None
    if user is not None and not user.is_active:
        user = None
    auth_time = g.session.created_at
    continue_url = f"/saml/{slug}/sso/continue?{urlencode({'r': request_id})}"
    if user is None or auth_time < record["login_after"]:
        if passive:
            _take(request_id, sp)
            return await _post_error(sp, _authn(record), STATUS_NO_PASSIVE, "The user is not signed in")
        flow_slug = await slug_for_designation(keystage, "authentication")
        if flow_slug is None:
            return await _invalid("no authentication flow", slug, 503)
        if user is not None:  # ForceAuthn: sign in again
            record["login_after"] = max(record["login_after"], time.time() - 1)
            pending = applications.pending_authorizations(g.session)
            pending[request_id] = record
            g.session[applications.AUTHORIZATION_REQUESTS] = pending
        return redirect(f"/flows/{flow_slug}/?{urlencode({'next': continue_url, 'restart': '1'})}", 302)
    access = await applications.check_access(keystage, sp.application, user, web_context.request_info())
    if not access.passing:
        _take(request_id, sp)
        if record["saml"]["id"] is None:
            return await _denied_page()
        return await _post_error(sp, _authn(record), STATUS_REQUEST_DENIED, "The user may not use this application")
    if not record.get("granted"):
        flow = await load_flow(keystage, sp.config.authorization_flow)
        if flow is None:
            return await _invalid(f"authorization flow {sp.config.authorization_flow!r} does not exist", slug, 503)
        return redirect(f"/flows/{flow.slug}/?{urlencode({'next': continue_url, 'restart': '1'})}", 302)
    _take(request_id, sp)
    subject = sso.name_id(sp.config, sp.keys, user)
    if subject is None:
        log.warning("SAML sign-in to %s: user %s has no %s for the NameID", slug, user.username,
                    sp.config.name_id_format)
        return await _message_page(web_context.translations().gettext(
            "Your account lacks information this application needs. Please contact your administrator."), 403)
    values = await attributes.user_attributes(keystage, user, sp.config, sp.provider_name,
                                              web_context.request_info())
    authn = _authn(record)
    try:
        encoded = await asyncio.to_thread(sso.make_response, sp.server, sp.config, authn, subject, values,
                                          auth_time=auth_time)
    except Refused as exc:
        log.error("SAML response for %s could not be made: %s", slug, exc)
        return await _message_page(web_context.translations().gettext(
            "Signing in to this application is not possible at the moment. Please try again later."), 503)
    await _record_event(keystage, user, sp, authn)
    return await _post(sp, authn.acs_url, "SAMLResponse", encoded, authn.relay_state,
                       web_context.translations().gettext("Signing you in"))


async def _record_event(keystage: Any, user: Any, sp: service_providers.ServiceProvider,
                        authn: sso.AuthnRequest) -> None:
    from keystage.engine import events

    await events.record(keystage, events.Event(
        "authorize_application", user_id=user.id, username=user.username,
        context={"application": sp.application.slug, "protocol": "saml", "idp_initiated": authn.id is None}))


async def _post(sp: service_providers.ServiceProvider, action: str, name: str, value: str,
                relay_state: str | None, heading: str) -> Response:
    fields = [(name, value)] + ([("RelayState", relay_state)] if relay_state else [])
    return await _page("post.html", action=action, fields=fields, heading=heading,
                       application=sp.application.name)


async def _post_error(sp: service_providers.ServiceProvider, authn: sso.AuthnRequest, status: str,
                      text: str) -> Response:
    encoded = await asyncio.to_thread(sso.make_error_response, sp.server, sp.config, authn, status, text)
    return await _post(sp, authn.acs_url, "SAMLResponse", encoded, authn.relay_state,
                       web_context.translations().gettext("Signing you in"))


# -- single logout ------------------------------------------------------------------------------


@saml_routes.route("/saml/<slug>/slo", methods=["GET", "POST"])
async def single_logout(slug: str) -> Any:
    keystage = web_context.keystage()
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    params = (await request.form) if request.method == "POST" else request.args
    problem = _params_problem(params)
    if problem:
        return await _invalid(problem, slug)
    if params.get("SAMLResponse") and not params.get("SAMLRequest"):
        return redirect("/", 302)  # an answer to a logout we did not start: nothing to do
    if not params.get("SAMLRequest"):
        return await _invalid("no SAMLRequest", slug)
    try:
        message = await slo.parse_logout_request(
            sp, keystage.kv, binding="post" if request.method == "POST" else "redirect",
            saml_request=params["SAMLRequest"], relay_state=params.get("RelayState"),
            sigalg=params.get("SigAlg"), signature=params.get("Signature"))
    except Refused as exc:
        return await _invalid(str(exc), slug)
    state = secrets.token_urlsafe(24)
    await keystage.kv.set(f"saml:slo:{state}", json.dumps(
        {"provider_id": sp.provider_id, "message": str(message), "relay_state": params.get("RelayState")}).encode(),
        ttl=SLO_STATE_TTL)
    done = f"/saml/{slug}/slo/done?{urlencode({'s': state})}"
    flow_slug = await slug_for_designation(keystage, "invalidation")
    if flow_slug is None:
        from quart import current_app

        await current_app.extensions["keystage_sessions"].destroy(g.session)
        return redirect(done, 302)
    return redirect(f"/flows/{flow_slug}/?{urlencode({'next': done, 'restart': '1'})}", 302)


@saml_routes.get("/saml/<slug>/slo/done")
async def single_logout_done(slug: str) -> Any:
    keystage = web_context.keystage()
    sp = await _find(slug)
    if isinstance(sp, Response):
        return sp
    key = f"saml:slo:{request.args.get('s', '')}"
    raw = await keystage.kv.get(key)
    if raw is None:
        return redirect("/", 302)
    await keystage.kv.delete(key)
    state = json.loads(raw)
    if state["provider_id"] != sp.provider_id:
        return redirect("/", 302)
    from saml2.samlp import logout_request_from_string

    message = logout_request_from_string(state["message"])
    answer = await asyncio.to_thread(slo.logout_answer, sp, message, state["relay_state"])
    if answer.fields is None:
        return redirect(answer.url, 302)
    t = web_context.translations()
    return await _page("post.html", action=answer.url, fields=answer.fields, heading=t.gettext("Signing you out"),
                       application=sp.application.name)
