"""Every hook keystage calls. Each docstring here is the plugin-author documentation.

docs/plugins/hooks.md is generated from these docstrings (``python docs/plugins/build_hooks.py``)
and a test keeps the two identical. Conventions:

* Hook names are verb-first. Arguments are keyword-only; a hook gains arguments over
  time and never changes the meaning of one (a plugin may accept fewer arguments than
  the spec lists: pluggy passes only those it names). An argument on its way out keeps
  working until the next major API version and warns (``KeystageDeprecationWarning``,
  naming the plugin) when an implementation accepts it.
* ``register_*`` hooks return a list (or a single item, or ``None``); the kernel
  collects the answers of every plugin, in plugin order: bundled plugins in their tuple
  order, then third-party plugins by name (``tryfirst=True`` / ``trylast=True`` on a
  ``hookimpl`` move a plugin ahead of / behind the others). None of them use ``firstresult``.
* Hooks marked *may be async* may be implemented with ``async def``; the kernel awaits.
  The others must be plain functions: a coroutine from them is logged and ignored.
* A hook implementation that raises, or returns something of the wrong type, is logged
  with the plugin's name and treated as if it had answered nothing (fail closed): it
  never takes the kernel or other plugins down. Where answering nothing would be unsafe
  (``check_config``, ``before_serving``, expression helpers), the failure stops startup
  with a line naming the plugin instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from quart import Blueprint, Quart

    from .config import Settings
    from .events import Event
    from .passwords import PasswordHasher
    from .runtime import Keystage

hookspec = pluggy.HookspecMarker("keystage")
hookimpl = pluggy.HookimplMarker("keystage")


@hookspec
def register_stage_types() -> list[type] | None:
    """Stage types this plugin provides: the steps admins put into flows.

    Called: once per process at startup, before the database is opened.

    Returns: a list of classes (or one class, or ``None``), each a subclass of
    ``keystage.engine.Stage`` with a ``type_name`` (a string unique across all plugins: the
    ``type`` admins write in a stage's configuration and the ``component`` of its JSON
    challenge), a ``Config`` model (a ``StageConfig`` subclass; unknown keys are refused) and,
    for the HTML face, ``template`` in ``template_folder`` (addressed as
    ``stages/<type_name>/<template>``, so it never shadows another template).

    Several plugins: every plugin's classes are registered, in plugin order. Two plugins
    registering the same ``type_name`` is a startup error naming both. An item that is not a
    ``Stage`` subclass with a string ``type_name`` is logged with the plugin's name and left out;
    flows using a type that is not registered show "This step is not available".

    Example::

        from keystage.engine import Continue, Stage, StageConfig, hookimpl

        class WelcomeStage(Stage):
            type_name = "welcome"
            Config = StageConfig
            template = "welcome.html"
            template_folder = Path(__file__).parent / "templates"

            async def challenge(self):
                return {"text": self.ctx.gettext("Welcome!")}

            async def submit(self, response):
                return Continue()

        @hookimpl
        def register_stage_types():
            return [WelcomeStage]

    Added in: 1.0
    """


@hookspec
def register_policy_types() -> list[type] | None:
    """Policy types this plugin provides: the tests admins bind to flows and stages.

    Called: once per process at startup, before the database is opened.

    Returns: a list of classes (or one class, or ``None``), each a subclass of
    ``keystage.engine.PolicyType`` with a unique ``type_name``, a ``Config`` model (a
    ``PolicyConfig`` subclass) and ``async def passes(self, request) -> PolicyResult``.
    ``request`` is a ``PolicyRequest`` (``user``, which is ``None`` when anonymous, ``request``,
    ``context``, ``keystage``). Set ``cacheable = True`` only when the answer depends on nothing
    but the user, the policy's config and what ``cache_key(request)`` returns.

    Several plugins: as for ``register_stage_types``: all registered, a ``type_name`` registered
    twice is a startup error naming both, wrong items are logged and left out. When a policy
    raises, times out or returns something else than a ``PolicyResult``, the binding fails
    closed (its ``failure_result``, false by default) and a ``policy_exception`` event is recorded.

    Example::

        from keystage.engine import N_, PolicyResult, PolicyType, hookimpl

        class WeekdaysPolicy(PolicyType):
            type_name = "weekdays"

            async def passes(self, request):
                if datetime.now().weekday() < 5:
                    return PolicyResult(True)
                return PolicyResult(False, (N_("Sign-in is closed at weekends."),))

        @hookimpl
        def register_policy_types():
            return [WeekdaysPolicy]

    Added in: 1.0
    """


@hookspec
def register_provider_types() -> list[type] | None:
    """Provider protocol types this plugin provides (OpenID Connect, SAML, ...).

    Called: once per process, the first time keystage needs the provider types (applying a
    blueprint with a ``provider`` entry, say).

    Returns: a list of classes (or one class, or ``None``), each a subclass of
    ``keystage.engine.ProviderType`` with a unique ``type_name`` (what admins write as a
    provider's ``type``) and a ``Config`` model (a ``ProviderConfig`` subclass), against which
    every configured provider's ``config`` is validated. How a flow's end hands the user over
    to a provider is not final in API 1.0: serve the protocol's endpoints with
    ``register_routes`` and keep its logic in plain functions.

    Several plugins: as for ``register_stage_types``: a ``type_name`` registered twice is an
    error naming both (raised when the types are collected); anything else than a
    ``ProviderType`` subclass is logged and left out.

    Example::

        from keystage.engine import ProviderConfig, ProviderType, hookimpl

        class HelloConfig(ProviderConfig):
            client_id: str
            redirect_uris: list[pydantic.AnyHttpUrl]

        class HelloProvider(ProviderType):
            type_name = "hello"
            Config = HelloConfig

        @hookimpl
        def register_provider_types():
            return [HelloProvider]

    Added in: 1.0
    """


@hookspec
def register_source_types() -> list[type] | None:
    """Source protocol types (upstream identity providers users can sign in with) this plugin provides.

    Called: once per process at startup.

    Returns: a list of classes (or one class, or ``None``), each with a unique ``type_name`` and a
    pydantic ``Config`` model. In API 1.0 keystage lists the plugin as implementing this hook but
    does not use the classes yet: the source API (sources an admin configures, linking upstream
    identities to users) is not final. Build the login and callback endpoints with
    ``register_routes`` meanwhile.

    Several plugins: the same uniqueness rule as ``register_stage_types`` will apply.

    Example::

        class UpstreamSource:
            type_name = "upstream"
            Config = UpstreamConfig  # a pydantic model: authorize_url, client_id, ...

        @hookimpl
        def register_source_types():
            return [UpstreamSource]

    Added in: 1.0
    """


@hookspec
def register_routes() -> list[Blueprint] | None:
    """Quart blueprints with this plugin's HTTP endpoints.

    Called: once each time the app is created (once per worker process).

    Returns: a list of ``quart.Blueprint`` (or one, or ``None``). A third-party plugin's
    blueprints are mounted under ``/-/plugins/<plugin name>/`` (a blueprint's own ``url_prefix``
    comes after it), so they can never shadow a route of keystage or of another plugin; use
    relative ``url_for(".view")`` inside them. A blueprint's ``template_folder`` is reachable as
    ``<plugin name>/...``, and the package's ``static/`` folder is served at
    ``/-/plugins/<plugin name>/static/``. Render pages with ``keystage.engine.render_page`` to
    get keystage's layout and the user's language. Bundled plugins mount as declared
    (protocols need fixed paths such as ``/.well-known/...``).

    Several plugins: all blueprints are mounted, each plugin under its own prefix (two plugins may
    use the same blueprint names and paths). A route with the same path and method as one already
    mounted is a startup error naming both owners. Anything else than a ``Blueprint`` is logged
    with the plugin's name and left out.

    Example::

        from quart import Blueprint, jsonify

        views = Blueprint("hello", __name__)

        @views.get("/status")            # served at /-/plugins/hello/status
        async def status():
            return jsonify({"ok": True})

        @hookimpl
        def register_routes():
            return [views]

    Added in: 1.0
    """


@hookspec
def register_migrations() -> Path | list[Path] | None:
    """Directories of numbered SQL migrations (``NNNN_description.sql``) owned by this plugin.

    Called: by ``keystage migrate`` and when ``keystage serve`` starts (and by the test kit,
    for every test database).

    Returns: a directory (``Path`` or ``str``), a list of them, or ``None``. Files are applied in
    number order, each in its own transaction, and recorded under the plugin's name, so numbers
    only need to be unique within one plugin. Never edit an applied file: add the next number.
    Name your tables after your plugin (``<name>_...``) so they cannot clash with others'.

    Several plugins: the kernel's own migrations run first, then plugins' in plugin order, all
    under one advisory lock (concurrent starters queue up). A badly named file, two files with
    one number, a missing directory or a failing migration stops startup naming the plugin and
    the file; anything else than a path is logged and left out.

    Example::

        @hookimpl
        def register_migrations():
            return Path(__file__).parent / "sql"   # sql/0001_acceptances.sql, ...

    Added in: 1.0
    """


@hookspec
def register_locales() -> list[tuple[str, Path]] | None:
    """Gettext catalogs this plugin ships: a list of ``(domain, locales_directory)``.

    Called: once each time the app is created.

    Returns: a list of ``(domain, directory)`` pairs (or one, or ``None``). ``directory`` holds
    ``<lang>/LC_MESSAGES/<domain>.po``; keystage reads the ``.po`` files at startup (no compile
    step: list them as package data). A plugin's domain must be its own (by convention its
    package name); the kernel's ``keystage`` domain is refused (logged, left out). Every language a
    plugin has a catalog for is offered by the language switcher.

    Several plugins: all catalogs are loaded and searched after the kernel's: a message keystage
    translates keeps keystage's translation, and between plugins the first in plugin order wins.
    Give your strings wording of their own. A catalog that cannot be read is logged and skipped.

    Example::

        @hookimpl
        def register_locales():
            return [("keystage_terms", Path(__file__).parent / "locales")]

    Added in: 1.0
    """


@hookspec
def register_expression_helpers() -> dict[str, Any] | None:
    """Names to offer to admin-written expressions: ``{name: callable_or_value}``.

    Called: once per process at startup.

    Returns: a dict (or ``None``). Names must be valid identifiers that do not start with an
    underscore and do not shadow a builtin or one of keystage's helpers.

    Expressions run in separate sandbox worker processes, so each value must travel there:
    a module-level function importable by its module and name (or the string
    ``"package.module:function"``), or plain JSON data. Anything else (a lambda, a bound
    method, an object) is refused at startup naming the plugin. A helper's arguments and
    its answer are plain data; the answer is frozen before the expression sees it.

    Several plugins: all helpers are offered; a name registered by two plugins is a startup
    error naming both. An answer that is not a dict stops startup naming the plugin.

    Example::

        # keystage_hr/helpers.py: module level, so the sandbox workers can import it
        def department_of(username):
            return DIRECTORY.get(username, "")

        @hookimpl
        def register_expression_helpers():
            return {"department_of": department_of, "hr_domains": ["hr.example.com"]}

    Added in: 1.0
    """


@hookspec
def register_password_hashers(settings: Settings) -> list[PasswordHasher] | None:
    """Password hashers (objects following ``keystage.engine.PasswordHasher``), built from ``settings``.

    Called: once per process at startup.

    Arguments:
        ``settings`` — the effective ``Settings`` (for hashing parameters, say).

    Returns: a list of hasher objects (or one, or ``None``).

    Several plugins: the first hasher of the first plugin to answer hashes new passwords (the
    bundled Argon2id hasher is registered with ``trylast=True`` so that a plugin may replace it);
    every registered hasher may verify a stored hash it recognises, and a hash made by a hasher
    other than the first is upgraded at the next successful login. Hashing runs off the event
    loop. Anything that is not a ``PasswordHasher`` is logged and left out; no hasher at all is
    a startup error.

    Example::

        @hookimpl(tryfirst=True)
        def register_password_hashers(settings):
            return [ScryptHasher(n=2**15)]

    Added in: 1.0
    """


@hookspec
def check_config(config: dict[str, Any]) -> list[str] | None:
    """Validate this plugin's configuration.

    Called: once per process at startup, for each enabled plugin, before any of its other hooks.

    Arguments:
        ``config`` — the ``[plugin.<name>]`` table of keystage's TOML config file (an empty dict
        when there is none). Each plugin receives only its own table.

    Returns: a list of problems, each ``"key: what is wrong"`` (empty, or ``None``, when all is
    well). The first problem stops startup with one line naming the plugin, its version and the
    config path (``plugin.<name>.<key>: ...``). A ``[plugin.<name>]`` table for a plugin that is not
    enabled is an error too. An implementation that raises also stops startup, naming the plugin.

    Several plugins: each checks its own table; the first problem found stops startup.

    Example::

        @hookimpl
        def check_config(config):
            url = config.get("url", "")
            if not str(url).startswith("https://"):
                return [f"url: expected an https:// URL, got {url!r}"]
            return []

    Added in: 1.0
    """


@hookspec
def before_serving(app: Quart) -> None:
    """Called in each worker after the database pool is open, before the first request.

    May be async.

    Arguments:
        ``app`` — the Quart app; ``app.extensions["keystage"]`` is the running ``Keystage``
        (``.pool``, ``.kv``, ``.settings``, and ``.state``, a dict where a plugin may keep its
        per-process services under its own name).

    Returns: nothing.

    Several plugins: called in plugin order. An exception stops the worker's startup with a line
    naming the plugin: a plugin that cannot start does not serve half-initialised.

    Example::

        @hookimpl
        async def before_serving(app):
            app.extensions["keystage"].state["hello"] = await HelloClient.connect()

    Added in: 1.0
    """


@hookspec
def after_serving(app: Quart) -> None:
    """Called in each worker at shutdown, before the database pool is closed.

    May be async.

    Arguments:
        ``app`` — the Quart app, as for ``before_serving``.

    Returns: nothing.

    Several plugins: called in plugin order. Exceptions are logged with the plugin's name and do
    not stop the shutdown of other plugins.

    Example::

        @hookimpl
        async def after_serving(app):
            client = app.extensions["keystage"].state.pop("hello", None)
            if client is not None:
                await client.close()

    Added in: 1.0
    """


@hookspec
def on_event(event: Event, keystage: Keystage) -> None:
    """Called for every event recorded in the audit log, right after it is stored.

    May be async.

    Arguments:
        ``event`` — a ``keystage.engine.Event``: ``action`` (``login``, ``login_failed``,
        ``logout``, ``user_created``, ``user_updated``, ``policy_exception``,
        ``blueprint_applied``, and what plugins record with ``record_event``), ``user_id``,
        ``username``, ``client_ip``, ``user_agent``, ``context`` (a dict), ``id``, ``created_at``.
        ``keystage`` — the running kernel (its pool, key-value store, users), so a listener can
        keep its own state; accept only the arguments you need.

    Returns: nothing.

    Several plugins: every listener is called, in plugin order, and awaited in the request (or
    command) that recorded the event: keep it fast, and hand slow work (webhooks, mail) to a
    queue. When the event is recorded inside a transaction (a blueprint apply), listeners run
    before that transaction commits. An exception is logged with the plugin's name and changes
    nothing else: the event stays recorded and the request goes on.

    Example::

        @hookimpl
        async def on_event(event, keystage):
            if event.action == "login_failed":
                await keystage.pool.execute(
                    "INSERT INTO alerts_failures (username, at) VALUES ($1, $2)",
                    event.username, event.created_at)

    Added in: 1.0
    """
