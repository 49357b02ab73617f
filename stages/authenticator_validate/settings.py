"""The signed-in user's authenticators page: see them, remove one (with the password: a fresh
authentication, throttled like a login), and links to the ``stage_configuration`` flows that enrol
new ones. Served at ``/settings/authenticators/``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

from quart import Blueprint, g, redirect, request

from keystage.engine import events, web_context
from keystage.engine.authenticators import device_classes
from keystage.engine.csrf import FORM_FIELD, check_csrf, csrf_token
from keystage.engine.flows import slug_for_designation
from keystage.engine.stage import FieldError
from keystage.engine.templates import render_page
from keystage.engine.throttle import throttle_of

PATH = "/settings/authenticators/"
TEMPLATE = "stages.authenticator_validate/authenticators.html"
views = Blueprint("authenticator_settings", __name__)


async def _user() -> Any:
    if g.session.user_id is None:
        return None
    user = await web_context.keystage().users.get(g.session.user_id)
    return user if user is not None and user.is_active else None


async def _sign_in_first() -> Any:
    slug = await slug_for_designation(web_context.keystage(), "authentication")
    return redirect(f"/flows/{slug}/?{urlencode({'next': PATH})}" if slug else "/", 302)


async def _page(user: Any, errors: dict[str, list[FieldError]] | None = None, status: int = 200) -> Any:
    keystage = web_context.keystage()
    _ = translate = web_context.translations().gettext  # translate(): for texts that are not literals
    classes = device_classes(keystage)
    devices = []
    for device_class in classes.values():
        for device in await device_class.list(keystage, user.id):
            devices.append({"key": f"{device.kind}:{device.id}", "name": translate(device.name),
                            "label": translate(device_class.label)})
    rows = await keystage.pool.fetch(
        """SELECT DISTINCT f.slug, f.title FROM flows f JOIN flow_stage_bindings b ON b.flow_id = f.id
           JOIN stages s ON s.id = b.stage_id
           WHERE f.designation = 'stage_configuration' AND s.type = ANY($1::text[]) ORDER BY f.slug""",
        [t for t, cls in keystage.stage_types.items() if getattr(cls, "device_class", None) is not None])
    enrol = [{"url": f"/flows/{r['slug']}/?{urlencode({'next': PATH})}", "title": translate(r["title"]) if r["title"]
              else r["slug"]} for r in rows]
    messages = [_("The authenticator was removed.")] if request.args.get("removed") and not errors else []
    body = await render_page(
        TEMPLATE, devices=devices, enrol=enrol, messages=messages, csrf_token=csrf_token(g.session),
        with_password=bool(user.password_hash),
        errors={k: [e.as_json() for e in v] for k, v in (errors or {}).items()}, first_error=None)
    return body, status, {"Cache-Control": "no-store"}


@views.get(PATH)
async def show() -> Any:
    user = await _user()
    if user is None:
        return await _sign_in_first()
    return await _page(user)


@views.post(PATH)
async def remove() -> Any:
    user = await _user()
    if user is None:
        return await _sign_in_first()
    form = await request.form
    if not check_csrf(g.session, form.get(FORM_FIELD)):
        return await _page(user, status=403)
    keystage = web_context.keystage()
    _ = web_context.translations().gettext
    kind, _sep, device_id = str(form.get("device", "")).partition(":")
    device_class = device_classes(keystage).get(kind)
    # The fresh authentication: the password, or for an account without one a code (TOTP or recovery).
    field = "password" if user.password_hash else "code"
    secret = str(form.get(field, ""))[:1024]
    if not secret:
        return await _page(user, {field: [FieldError("required", _(
            "Please enter your password.") if field == "password" else _("Please enter the code."))]}, 400)
    info = web_context.request_info()
    throttle = throttle_of(keystage)
    attempt = await throttle.check(username=user.username, ip=info.client_ip, user_id=user.id,
                                   kind="password" if field == "password" else "code")
    if attempt.blocked:
        return await _page(user, {field: [FieldError("throttled", _(
            "Too many failed attempts. Please try again later."))]}, 429)
    if not await _confirmed(keystage, user, field, secret):
        await throttle.failed(attempt)
        return await _page(user, {field: [FieldError("invalid", _(
            "The password is not correct.") if field == "password" else _("The code is not correct."))]}, 400)
    await throttle.succeeded(attempt)
    if device_class is None or not device_id.isdigit() or not await device_class.remove(keystage, user.id,
                                                                                         int(device_id)):
        return await _page(user, status=404)
    await events.record(keystage, events.Event(
        "authenticator_removed", user_id=user.id, username=user.username, client_ip=info.client_ip,
        user_agent=info.user_agent, context={"kind": kind, "id": int(device_id)}))
    return redirect(f"{PATH}?removed=1", 303)


async def _confirmed(keystage: Any, user: Any, field: str, secret: str) -> bool:
    if field == "password":
        return bool(await keystage.users.check_password(user, secret))
    # The code device classes only need the kernel from their context.
    ctx: Any = SimpleNamespace(keystage=keystage)
    for kind in ("totp", "static"):
        device_class = device_classes(keystage).get(kind)
        if device_class is not None and await device_class.verify(ctx, user.id, {"code": secret}):
            return True
    return False
