"""The Quart application factory."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quart import Blueprint, Quart, Response, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from keystage import web
from . import i18n, sessions
from .config import Settings
from .errors import PluginError
from .flow_views import flow_views
from .request_info import trusted_networks
from .templates import plugin_folders, template_loader
from .health import health
from .metrics import Metrics
from .runtime import Keystage
from . import web_context

access_log = logging.getLogger("keystage.access")
log = logging.getLogger("keystage")

# Every third-party plugin's routes and static files live under PLUGIN_URL_PREFIX/<plugin name>/.
PLUGIN_URL_PREFIX = "/-/plugins"

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
    ),
}


def request_id_for(incoming: str) -> str:
    """The request's id: a proxy's ``X-Request-Id`` only when short and plain (so it cannot forge log
    lines), a fresh one otherwise."""
    if 0 < len(incoming) <= 64 and incoming.isascii() and incoming.isprintable() and '"' not in incoming:
        return incoming
    return uuid.uuid4().hex


def log_request(method: str, path: str, status: int, duration: float, request_id: str | None) -> None:
    """The access log line of one answer (INFO)."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps({
            "event": "request", "method": method, "path": path, "status": status,
            "duration_ms": round(duration * 1000, 2), "request_id": request_id,
        }))


def create_app(settings: Settings, *, keystage: Keystage | None = None) -> Quart:
    """Build the app for ``settings``. The database pool opens in ``before_serving``."""
    # Explicit paths: Flask cannot find an instance path inside a namespace package.
    web_root = Path(web.__file__).parent
    app = Quart("keystage.web", static_folder=str(web_root / "static"), static_url_path="/-/static",
                root_path=str(web_root), instance_path=str(Path(settings.data_dir).resolve() / "instance"))
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    kernel = keystage or Keystage(settings)
    app.extensions["keystage"] = kernel
    metrics = Metrics()
    app.extensions["keystage_metrics"] = metrics
    headers = dict(_SECURITY_HEADERS)
    if settings.secure_cookies:
        headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    # For plugins that answer a hot path straight from ASGI: the same headers on every answer.
    app.extensions["keystage_security_headers"] = headers

    app.extensions["keystage_catalogs"] = build_catalogs(kernel)
    app.extensions["keystage_trusted_proxies"] = trusted_networks(settings)
    routes = plugin_routes(kernel)
    # Our loader replaces Quart's dispatching one, so blueprint template folders are only
    # reachable under their plugin's prefix (set before anything creates app.jinja_env).
    app.jinja_options = {**app.jinja_options, "loader": template_loader(kernel, blueprint_template_folders(routes))}
    sessions.install(app)
    app.register_blueprint(health)
    app.register_blueprint(flow_views)
    mount_plugins(app, kernel, routes)

    @app.before_serving
    async def _open() -> None:
        await kernel.open()
        kernel.listen_for_changes()
        await kernel.plugins.acall_each("before_serving", raise_errors=True, app=app)

    @app.after_serving
    async def _close() -> None:
        await kernel.plugins.acall_each("after_serving", app=app)
        await kernel.close()

    @app.before_request
    async def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_for(request.headers.get("X-Request-Id", ""))

    @app.after_request
    async def _finish(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        duration = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.observe(request.method, response.status_code, duration)
        log_request(request.method, request.path, response.status_code, duration, g.get("request_id"))
        return response

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Any:
        code = error.code or 500
        if _wants_html():
            template = "not_found.html" if code == 404 else "error.html"
            body = await render_template(template, **web_context.template_globals(), request_id=None)
            return Response(body, status=code, content_type="text/html; charset=utf-8")
        return jsonify({"error": error.name, "status": code}), code

    @app.errorhandler(Exception)
    async def _crash(error: Exception) -> Any:
        # Never a traceback in an answer: the log has it, the client gets the request id.
        rid = g.get("request_id") or secrets.token_hex(8)
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        if _wants_html():
            try:
                body = await render_template("error.html", **web_context.template_globals(), request_id=rid)
                return Response(body, status=500, content_type="text/html; charset=utf-8")
            except Exception:
                log.exception("the error page failed too")
        return jsonify({"error": "Internal Server Error", "status": 500, "request_id": rid}), 500

    return app


def build_catalogs(kernel: Keystage) -> i18n.Catalogs:
    """The kernel's catalogs with every plugin's (``register_locales``) under them."""
    sources = kernel.plugins.collect("register_locales", _is_locale_source, "a (domain, directory) pair")
    return i18n.Catalogs([source for _plugin, source in sources], kernel.settings.default_locale)


def plugin_routes(kernel: Keystage, only: str | None = None) -> dict[str, list[Blueprint]]:
    """The blueprints each plugin answers to ``register_routes``, by plugin name."""
    routes: dict[str, list[Blueprint]] = {}
    for name, blueprint in kernel.plugins.collect("register_routes", _is_blueprint, "a Quart Blueprint"):
        if only is None or name == only:
            routes.setdefault(name, []).append(blueprint)
    return routes


def mount_plugins(app: Quart, kernel: Keystage, routes: dict[str, list[Blueprint]],
                  names: Iterable[str] | None = None) -> None:
    """Mount plugins' routes and static folders; a route colliding with an existing one is a PluginError.

    A third-party plugin's blueprints are nested in one blueprint at ``/-/plugins/<name>``, which
    also serves the plugin package's ``static/`` folder at ``/-/plugins/<name>/static/``; so no
    route of a plugin can shadow the kernel's or another plugin's. Bundled plugins (reviewed with
    the kernel; protocols need fixed paths such as ``/.well-known/...``) mount as declared.
    """
    statics = plugin_folders(kernel, "static")
    owners: dict[str, str] = app.extensions.setdefault("keystage_route_owners", {})
    for name in names if names is not None else [i.name for i in kernel.plugins.list() if i.enabled]:
        blueprints = routes.get(name, [])
        info = kernel.plugins.infos.get(name)
        bundled = info is not None and info.origin == "bundled"
        to_mount = list(blueprints) if bundled else []
        if (blueprints and not bundled) or name in statics:
            parent = Blueprint(
                plugin_namespace(name), __name__, url_prefix=f"{PLUGIN_URL_PREFIX}/{name}",
                static_folder=str(statics[name][0]) if name in statics else None, static_url_path="/static",
            )
            for blueprint in [] if bundled else blueprints:
                parent.register_blueprint(blueprint)
            to_mount.append(parent)
        for blueprint in to_mount:
            before = {rule.endpoint for rule in app.url_map.iter_rules()}
            try:
                app.register_blueprint(blueprint)
            except (ValueError, AssertionError) as exc:
                raise PluginError(f"plugin {name}: cannot mount blueprint {blueprint.name!r}: {exc}") from None
            for rule in app.url_map.iter_rules():
                if rule.endpoint not in before:
                    owners[rule.endpoint] = name
    _check_collisions(app, owners)


def _check_collisions(app: Quart, owners: dict[str, str]) -> None:
    seen: dict[tuple[str, str | None], list[Any]] = {}
    for rule in app.url_map.iter_rules():
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        for other in seen.get((rule.rule, rule.host or rule.subdomain), []):
            if methods & (set(other.methods or ()) - {"HEAD", "OPTIONS"}):
                first = owners.get(other.endpoint, "the kernel")
                second = owners.get(rule.endpoint, "the kernel")
                raise PluginError(
                    f"route {rule.rule} of {_owner(second)} ({rule.endpoint}) collides with the same route of "
                    f"{_owner(first)} ({other.endpoint})"
                )
        seen.setdefault((rule.rule, rule.host or rule.subdomain), []).append(rule)


def _owner(name: str) -> str:
    return name if name == "the kernel" else f"plugin {name}"


def plugin_namespace(plugin_name: str) -> str:
    return "plugin_" + re.sub(r"[^A-Za-z0-9_]", "_", plugin_name)


def blueprint_template_folders(routes: dict[str, list[Blueprint]]) -> dict[str, list[str]]:
    return {
        name: [str(Path(bp.root_path) / bp.template_folder) for bp in blueprints if bp.template_folder]
        for name, blueprints in routes.items()
    }


def _is_blueprint(item: Any) -> bool:
    return isinstance(item, Blueprint)


def _wants_html() -> bool:
    if request.path.startswith(("/api/", "/-/")):
        return False
    accept = request.accept_mimetypes
    return accept.best_match(["text/html", "application/json"]) == "text/html"


def _is_locale_source(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0] != i18n.DOMAIN
