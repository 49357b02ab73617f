"""The two faces of the flow protocol: HTML (``/flows/<slug>/``) and JSON (``/api/v1/flows/<slug>/executor``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from quart import Blueprint, Response, current_app, g, jsonify, redirect, render_template, request

from . import i18n, web_context
from .csrf import check_csrf, csrf_token
from .executor import Executor, Outcome
from .flows import slug_for_designation
from .redirects import safe_next

flow_views = Blueprint("keystage_flows", __name__)
MAX_FIELDS = 50


def _executor() -> Executor:
    return Executor(
        web_context.keystage(), current_app.extensions["keystage_sessions"], g.session,
        web_context.request_info(), web_context.translations(),
    )


def _next_url() -> str | None:
    return safe_next(request.args.get("next"))


def _self_url(slug: str) -> str:
    query = {k: v for k, v in request.args.items() if k in ("next",) and safe_next(v)}
    return f"/flows/{slug}/" + (f"?{urlencode(query)}" if query else "")


async def _render(outcome: Outcome, slug: str) -> tuple[str, int]:
    challenge = outcome.challenge
    component = outcome.component
    context: dict[str, Any] = {
        **web_context.template_globals(), "challenge": challenge, "flow": challenge.get("flow", {}),
        "errors": challenge.get("response_errors", {}), "messages": challenge.get("messages", []),
        "csrf_token": csrf_token(g.session), "action": _self_url(slug),
    }
    if component == "access-denied":
        return await render_template("access_denied.html", **context), outcome.status
    if component == "not-found":
        return await render_template("not_found.html", **context), 404
    cls = web_context.keystage().stage_types[component]
    context["stage_template"] = f"stages/{component}/{cls.template}"
    return await render_template("flow.html", **context), outcome.status


@flow_views.route("/flows/<slug>/", methods=["GET", "POST"])
async def flow_html(slug: str) -> Any:
    executor = _executor()
    if request.method == "GET":
        outcome = await executor.get(slug, next_url=_next_url(), restart=request.args.get("restart") == "1",
                                     login_hint=request.args.get("login_hint"))
    else:
        form = await request.form
        if not check_csrf(g.session, form.get("csrf_token")):
            message = web_context.translations().gettext(
                "This form has expired or was not sent from this site. Please try again.")
            context = {**web_context.template_globals(), "message": message, "retry_url": _self_url(slug)}
            return await render_template("csrf_failed.html", **context), 403
        response = {key: form.get(key) for key in list(form.keys())[:MAX_FIELDS] if key != "csrf_token"}
        outcome = await executor.post(slug, response, next_url=_next_url())
    if outcome.component == "redirect":
        return redirect(outcome.challenge["to"], 302)
    if request.method == "POST" and outcome.advanced and _nothing_to_say(outcome):
        return redirect(_self_url(slug), 303)
    body, status = await _render(outcome, slug)
    return _vary(Response(body, status=status, content_type="text/html; charset=utf-8"))


@flow_views.route("/api/v1/flows/<slug>/executor", methods=["GET", "POST"])
async def flow_json(slug: str) -> Any:
    executor = _executor()
    if request.method == "GET":
        outcome = await executor.get(slug, next_url=_next_url(), restart=request.args.get("restart") == "1",
                                     login_hint=request.args.get("login_hint"))
    else:
        # Requiring a JSON body forces a CORS preflight on cross-site requests, which we
        # never grant: that is this face's CSRF protection (with SameSite=Lax cookies).
        if not request.is_json:
            return jsonify({"error": "unsupported_media_type",
                            "message": "Send the response as application/json."}), 415
        body = await request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify({"error": "invalid_json", "message": "The body must be a JSON object."}), 400
        response = dict(list(body.items())[:MAX_FIELDS])
        outcome = await executor.post(slug, response, next_url=_next_url())
    status = outcome.status if outcome.component in ("not-found",) else 200
    return _vary(jsonify(outcome.challenge)), status


def _nothing_to_say(outcome: Outcome) -> bool:
    """POST-redirect-GET only when the next page carries no one-off message, error or denial:
    those are rendered in the POST's answer, since the following GET would rebuild the page
    without them."""
    challenge = outcome.challenge
    return (outcome.component != "access-denied" and not challenge.get("messages")
            and not challenge.get("response_errors"))


def _vary(response: Response) -> Response:
    response.headers["Content-Language"] = i18n.html_lang(web_context.locale())
    response.vary.add("Accept-Language")
    response.vary.add("Cookie")
    response.headers["Cache-Control"] = "no-store"
    return response


@flow_views.get("/")
async def home() -> Any:
    keystage = web_context.keystage()
    user = None
    if g.session.user_id is not None:
        user = await keystage.users.get(g.session.user_id)
    if user is None or not user.is_active:
        slug = await slug_for_designation(keystage, "authentication")
        if slug is None:
            return redirect("/flows/initial-setup/", 302)
        return redirect(f"/flows/{slug}/?{urlencode({'next': '/'})}", 302)
    logout_slug = await slug_for_designation(keystage, "invalidation")
    context = {**web_context.template_globals(), "user": user,
               "logout_url": f"/flows/{logout_slug}/" if logout_slug else None,
               **await library_context(keystage, user, request.args.get("q", ""))}
    return _vary(Response(await render_template("library.html", **context), content_type="text/html; charset=utf-8"))


async def _with_launch_urls(keystage: Any, apps: list[Any]) -> list[Any]:
    """Applications without a launch URL get the one their provider type offers (one query)."""
    import dataclasses
    import json

    from .applications import provider_types

    wanted = {a.provider_id for a in apps if not a.launch_url and a.provider_id is not None}
    if not wanted:
        return apps
    rows = await keystage.pool.fetch("SELECT id, type, config FROM providers WHERE id = ANY($1::bigint[])",
                                     list(wanted))
    types = provider_types(keystage)
    providers = {row["id"]: (types.get(row["type"]), row["config"]) for row in rows}
    result = []
    for app in apps:
        kind, config = providers.get(app.provider_id, (None, None)) if not app.launch_url else (None, None)
        url = None
        if kind is not None:
            url = kind.launch_url(app.slug, json.loads(config) if isinstance(config, str) else dict(config))
        result.append(dataclasses.replace(app, launch_url=url) if url else app)
    return result


async def library_context(keystage: Any, user: Any, query: str) -> dict[str, Any]:
    """The user's application library: what they may use (one policy batch), grouped, filtered by ``query``."""
    from itertools import groupby

    from .applications import library

    apps = await _with_launch_urls(keystage, await library(keystage, user, web_context.request_info()))
    searchable = len(apps) > 1
    needle = query.strip().casefold()[:100]
    if needle:
        apps = [a for a in apps if needle in f"{a.name} {a.description} {a.group}".casefold()]
    groups = [(group, list(items)) for group, items in groupby(apps, key=lambda a: a.group)]
    return {"groups": groups, "query": query[:100], "searchable": searchable or bool(needle)}
