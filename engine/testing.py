"""The keystage test kit, a pytest plugin (entry point ``pytest11``): real PostgreSQL, real Redis.

Installed with keystage, so a plugin package's tests get these fixtures without any import.
Everything a plugin test needs is importable from here; ``__all__`` lists it.

Fixtures:

* ``keystage_plugins`` (session) — names of installed plugins (entry points) to enable, like
  ``KEYSTAGE_PLUGINS``; by default that variable's value. A plugin package overrides it in its
  ``conftest.py`` to test itself: its migrations then run in the session's template database.
* ``keystage_extra_plugins`` — ``[(name, plugin_object)]`` registered on the kernel of ``keystage``
  and ``keystage_app`` besides the enabled ones (default none); override it in a test module.
* ``keystage_server_url`` (session) — a PostgreSQL server: ``KEYSTAGE_TEST_DATABASE_URL`` when
  set, else an embedded server in a temporary directory for the session.
* ``keystage_database_url`` — a fresh database for one test, cloned from a template that
  was migrated once per session (kernel, bundled and enabled plugins), dropped afterwards.
* ``keystage_settings`` — ``Settings`` for that database and a temporary data directory.
* ``keystage`` — an opened ``Keystage`` runtime (pool, plugins, services).
* ``keystage_app`` / ``keystage_client`` — the Quart app with its serving lifecycle run, and
  a test client with a cookie jar.
* ``flow`` — a ``FlowDriver`` on ``keystage_client``: ``await flow.start(slug)``,
  ``await flow.submit(**fields)``, ``flow.challenge``.
* ``user_factory`` / ``group_factory`` — ``await user_factory(username=..., password=..., groups=[...])``
  creates a user (a unique username when none is given); same for groups.
* ``apply_blueprint`` — ``await apply_blueprint(yaml_text_or_path, ...)`` applies blueprints.
* ``redis_url`` — ``KEYSTAGE_TEST_REDIS_URL`` or redis://127.0.0.1:6379/15 when reachable; the
  test is skipped otherwise, unless ``KEYSTAGE_TEST_REQUIRE_ALL=1`` (CI), where it fails.

The factories and ``apply_blueprint`` work on the kernel the test uses: the app's when the test
uses ``keystage_app`` (or ``keystage_client`` / ``flow``), else the ``keystage`` fixture's.

Helpers: ``registered_plugin(kernel_or_app, plugin, name)`` (a context manager, ``with`` or
``async with``), ``make_flow(kernel, slug, [(stage_type, config), ...])``, ``FlowDriver``,
``apply_blueprint_to(kernel_or_app, *sources)``, ``base_settings``, ``skip_or_fail``,
``sign_in(browser, next_path, username, password)`` and ``walk(browser, url, ...)`` (an httpx
client on the app, following redirects like a browser, signing in and consenting on the way).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import secrets
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from .config import Settings, load_settings
from .runtime import Keystage
from .users import Group, User

__all__ = [
    "FlowDriver",
    "apply_blueprint_to",
    "base_settings",
    "form_value",
    "kernel_of",
    "make_flow",
    "registered_plugin",
    "require_all",
    "sign_in",
    "skip_or_fail",
    "walk",
    "with_database",
]

REQUIRE_ALL_ENV = "KEYSTAGE_TEST_REQUIRE_ALL"


def require_all() -> bool:
    """True in CI: what would be skipped for a missing service or browser must fail instead."""
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    if require_all():
        pytest.fail(f"{reason} (and {REQUIRE_ALL_ENV} is set, so this may not be skipped)")
    pytest.skip(reason)


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    if parts.hostname is None and "host=" in parts.query:
        return urlunsplit(parts._replace(path=f"/{database}"))
    return urlunsplit(parts._replace(path=f"/{database}"))


def base_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: a given database, a private data directory, nothing from the environment.

    ``plugins=("name", ...)`` enables installed plugins, as ``KEYSTAGE_PLUGINS`` would.
    """
    # Default blueprints are left out so that each test states the flows it relies on
    # (`await keystage.engine.blueprints.apply_defaults(kernel)` brings them in).
    env = {"KEYSTAGE_DATABASE_URL": database_url, "KEYSTAGE_DATA_DIR": str(data_dir),
           "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "false"}
    settings = load_settings(env)
    if "plugins" in overrides:
        overrides["plugins"] = tuple(overrides["plugins"])
    return dataclasses.replace(settings, **overrides) if overrides else settings


@pytest.fixture(scope="session")
def keystage_plugins() -> list[str]:
    """Installed plugins to enable in every test of the session (default: ``$KEYSTAGE_PLUGINS``)."""
    return [name.strip() for name in os.environ.get("KEYSTAGE_PLUGINS", "").split(",") if name.strip()]


@pytest.fixture
def keystage_extra_plugins() -> list[tuple[str, object]]:
    """Plugin objects to register on the test's kernel, as ``[(name, plugin)]``; override to add some."""
    return []


@pytest.fixture(scope="session")
def keystage_server_url() -> Iterator[str]:
    url = os.environ.get("KEYSTAGE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from .embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="keystage-test-pg-") as directory:
        os.chmod(directory, 0o755)
        server = EmbeddedPostgres(Path(directory))
        try:
            yield server.start()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def keystage_template_database(
    keystage_server_url: str, tmp_path_factory: pytest.TempPathFactory, keystage_plugins: list[str]
) -> Iterator[str]:
    """A database migrated once for the session; each test clones it (fast) instead of migrating.
    Dropped at the end of the session, so a shared server does not collect them."""
    with fresh_database(keystage_server_url, prefix=f"keystage_tpl_{os.getpid()}") as url:
        settings = base_settings(url, tmp_path_factory.mktemp("tpl"), plugins=keystage_plugins)

        async def build() -> None:
            kernel = Keystage(settings)
            await kernel.open(migrate=True)
            await kernel.close()

        asyncio.run(build())
        yield urlsplit(url).path.lstrip("/")


@contextlib.contextmanager
def fresh_database(server_url: str, *, template: str | None = None, prefix: str = "keystage_t") -> Iterator[str]:
    """A new database on ``server_url`` (empty, or a copy of ``template``), dropped afterwards.

    Yields its URL. Usable from synchronous fixtures and tests (it runs its own event loop).
    """
    name = f"{prefix}_{secrets.token_hex(6)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(server_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    clone = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(run(f'CREATE DATABASE "{name}"{clone}'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def keystage_database_url(keystage_server_url: str, keystage_template_database: str) -> Iterator[str]:
    with fresh_database(keystage_server_url, template=keystage_template_database) as url:
        yield url


@pytest.fixture
def keystage_settings(keystage_database_url: str, tmp_path: Path, keystage_plugins: list[str]) -> Settings:
    return base_settings(keystage_database_url, tmp_path / "data", plugins=keystage_plugins)


@pytest_asyncio.fixture
async def keystage(keystage_settings: Settings, keystage_extra_plugins: list[tuple[str, object]]
                   ) -> AsyncIterator[Keystage]:
    kernel = Keystage(keystage_settings, extra_plugins=list(keystage_extra_plugins))
    await kernel.open()
    try:
        yield kernel
    finally:
        await kernel.close()


@pytest_asyncio.fixture
async def keystage_app(keystage_settings: Settings, keystage_extra_plugins: list[tuple[str, object]]
                       ) -> AsyncIterator[Any]:
    from .app import create_app

    kernel = Keystage(keystage_settings, extra_plugins=list(keystage_extra_plugins))
    app = create_app(keystage_settings, keystage=kernel)
    async with app.test_app():
        yield app


@pytest.fixture
def keystage_client(keystage_app: Any) -> Any:
    return keystage_app.test_client()


def kernel_of(target: Any) -> Keystage:
    """The ``Keystage`` of a kernel or of an app made by ``create_app``."""
    if isinstance(target, Keystage):
        return target
    extensions = getattr(target, "extensions", None)
    if isinstance(extensions, dict) and isinstance(extensions.get("keystage"), Keystage):
        return extensions["keystage"]
    raise TypeError(f"expected a Keystage or a keystage app, got {type(target).__name__}")


class registered_plugin:  # noqa: N801  (used like a function: `with registered_plugin(...)`)
    """Register ``plugin`` under ``name`` for the duration of a ``with`` (or ``async with``) block.

    ``target`` is a kernel or an app. The kernel's stage and policy types are refreshed, so a
    stage the plugin registers can be bound in a flow at once; with an app, its templates,
    catalogs, routes and static files are mounted too (under ``/-/plugins/<name>/``). The
    ``async with`` form also applies the plugin's migrations. All of it is undone on exit (tables
    its migrations created stay: the test's database is dropped anyway). Expression helpers reach
    a sandbox built after the block starts, not one already running.
    """

    def __init__(self, target: Any, plugin: object, name: str = "test-plugin") -> None:
        self.kernel = kernel_of(target)
        self.app = None if isinstance(target, Keystage) else target
        self.plugin = plugin
        self.name = name

    def __enter__(self) -> object:
        self.kernel.plugins.register(self.name, self.plugin)
        try:
            self._refresh(mount=True)
        except BaseException:
            self.kernel.plugins.unregister(self.name)
            self._refresh(mount=False)
            raise
        return self.plugin

    def __exit__(self, *exc: object) -> None:
        self.kernel.plugins.unregister(self.name)
        self._refresh(mount=False)

    async def __aenter__(self) -> object:
        plugin = self.__enter__()
        try:
            await self.kernel.migrate()
        except BaseException:
            self.__exit__()
            raise
        return plugin

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    def _refresh(self, *, mount: bool) -> None:
        from .policy import PolicyType
        from .registry import collect_types
        from .stage import Stage

        kernel = self.kernel
        kernel.stage_types = collect_types(kernel.plugins, "register_stage_types", Stage, "stage")
        kernel.policy_types = collect_types(kernel.plugins, "register_policy_types", PolicyType, "policy")
        kernel.state.pop("provider_types", None)  # collected again on next use
        if self.app is None:
            return
        from . import app as app_module
        from .templates import template_loader

        routes = app_module.plugin_routes(kernel)
        if mount:
            app_module.mount_plugins(self.app, kernel, routes, names=[self.name])
        else:
            _unmount_routes(self.app, self.name)
        # Jinja caches templates per loader object: a new loader starts with a clean cache.
        self.app.jinja_env.loader = template_loader(kernel, app_module.blueprint_template_folders(routes))
        self.app.extensions["keystage_catalogs"] = app_module.build_catalogs(kernel)


def _unmount_routes(app: Any, name: str) -> None:
    """Take a plugin's rules out of the app's URL map (werkzeug has no removal: rebuild the map)."""
    owners: dict[str, str] = app.extensions.get("keystage_route_owners", {})
    gone = {endpoint for endpoint, owner in owners.items() if owner == name}
    if not gone:
        return
    old = app.url_map
    new = app.url_map_class(host_matching=old.host_matching)
    new.converters = old.converters
    for rule in old.iter_rules():
        if rule.endpoint in gone:
            continue
        new.add(type(rule)(
            rule.rule, defaults=rule.defaults, subdomain=rule.subdomain, methods=rule.methods, endpoint=rule.endpoint,
            strict_slashes=rule.strict_slashes, merge_slashes=rule.merge_slashes, host=rule.host,
            websocket=rule.websocket, provide_automatic_options=getattr(rule, "provide_automatic_options", False),
        ))
    app.url_map = new
    for endpoint in gone:
        owners.pop(endpoint, None)
        app.view_functions.pop(endpoint, None)
    from .app import plugin_namespace

    namespace = plugin_namespace(name)
    for blueprint_name in [n for n in app.blueprints if n == namespace or n.startswith(namespace + ".")]:
        del app.blueprints[blueprint_name]


def _kernel_for(request: pytest.FixtureRequest) -> Keystage:
    """The kernel of the test: its app's when it uses the app, else the ``keystage`` fixture's."""
    if {"keystage_app", "keystage_client", "flow"} & set(request.fixturenames):
        return kernel_of(request.getfixturevalue("keystage_app"))
    return request.getfixturevalue("keystage")


_unique = itertools.count(1)


@pytest.fixture
def user_factory(request: pytest.FixtureRequest) -> Callable[..., Awaitable[User]]:
    """``await user_factory(username=None, *, password=None, email=None, groups=(), **fields)`` → ``User``.

    ``groups`` are ``Group`` objects, ids or names (created when missing). Other fields go to
    ``Users.create`` (``display_name``, ``is_superuser``, ``attributes``).
    """
    kernel = _kernel_for(request)

    async def create(username: str | None = None, *, password: str | None = None, email: str | None = None,
                     groups: tuple[Group | int | str, ...] | list[Group | int | str] = (), **fields: Any) -> User:
        user = await kernel.users.create(username or f"user{next(_unique)}", password=password, email=email,
                                         **fields)
        for group in groups:
            await kernel.users.add_member(await _group_id(kernel, group), user.id)
        return user

    return create


@pytest.fixture
def group_factory(request: pytest.FixtureRequest) -> Callable[..., Awaitable[Group]]:
    """``await group_factory(name=None, *, parent=None, attributes=None, members=())`` → ``Group``."""
    kernel = _kernel_for(request)

    async def create(name: str | None = None, *, parent: Group | int | str | None = None,
                     attributes: dict[str, Any] | None = None, members: tuple[User | int, ...] | list[User | int] = (),
                     ) -> Group:
        parent_id = await _group_id(kernel, parent) if parent is not None else None
        group = await kernel.users.create_group(name or f"group{next(_unique)}", parent_id=parent_id,
                                                attributes=attributes)
        for member in members:
            await kernel.users.add_member(group.id, member if isinstance(member, int) else member.id)
        return group

    return create


async def _group_id(kernel: Keystage, group: Group | int | str) -> int:
    if isinstance(group, Group):
        return group.id
    if isinstance(group, int):
        return group
    found = await kernel.pool.fetchval("SELECT id FROM groups WHERE lower(name) = lower($1)", group)
    return int(found) if found is not None else (await kernel.users.create_group(group)).id


async def apply_blueprint_to(target: Any, *sources: str | Path) -> Any:
    """Apply blueprints (YAML text, or paths) to a kernel or app, in one transaction; returns the report."""
    from . import blueprints

    return await blueprints.apply(kernel_of(target), [blueprints.load(source) for source in sources])


@pytest.fixture
def apply_blueprint(request: pytest.FixtureRequest) -> Callable[..., Awaitable[Any]]:
    """``await apply_blueprint(yaml_text_or_path, ...)`` on the test's kernel; returns the ``ApplyReport``."""
    kernel = _kernel_for(request)

    async def apply(*sources: str | Path) -> Any:
        return await apply_blueprint_to(kernel, *sources)

    return apply


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("KEYSTAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if not _reachable(url):
        skip_or_fail(f"no Redis reachable at {url} (set KEYSTAGE_TEST_REDIS_URL)")
    return url


async def make_flow(
    keystage: Keystage | Any, slug: str, stages: list[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]],
    *, designation: str = "authentication", title: str = "", **flow_attrs: Any,
) -> int:
    """Create a flow bound to new stages, in order: ``[(type, config[, binding attrs]), ...]``. Returns the flow id.

    ``keystage`` is a kernel or an app.
    """
    import json

    keystage = kernel_of(keystage)

    async with keystage.pool.acquire() as conn, conn.transaction():
        flow_id = await conn.fetchval(
            "INSERT INTO flows (slug, name, title, designation, policy_engine_mode, denied_action)"
            " VALUES ($1, $1, $2, $3, $4, $5) RETURNING id",
            slug, title or slug, designation, flow_attrs.get("policy_engine_mode", "any"),
            flow_attrs.get("denied_action", "message"),
        )
        for index, item in enumerate(stages):
            stage_type, config = item[0], item[1]
            binding = item[2] if len(item) > 2 else {}  # type: ignore[misc]
            stage_id = await conn.fetchval(
                "INSERT INTO stages (name, type, config) VALUES ($1, $2, $3::jsonb) RETURNING id",
                f"{slug}-{index}-{stage_type}", stage_type, json.dumps(config),
            )
            await conn.execute(
                """INSERT INTO flow_stage_bindings (flow_id, stage_id, "order", evaluate_on_plan,
                       re_evaluate_policies, invalid_response_action) VALUES ($1, $2, $3, $4, $5, $6)""",
                flow_id, stage_id, binding.get("order", (index + 1) * 10), binding.get("evaluate_on_plan", True),
                binding.get("re_evaluate_policies", False), binding.get("invalid_response_action", "retry"),
            )
    return int(flow_id)


class FlowDriver:
    """Walks a flow through the JSON face: ``await flow.start(slug)``, ``await flow.submit(...)``, ``flow.challenge``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.slug: str | None = None
        self.challenge: dict[str, Any] = {}
        self.status = 0

    async def start(self, slug: str, **query: str) -> dict[str, Any]:
        self.slug = slug
        from urllib.parse import urlencode

        suffix = f"?{urlencode(query)}" if query else ""
        response = await self.client.get(f"/api/v1/flows/{slug}/executor{suffix}")
        self.status = response.status_code
        self.challenge = await response.get_json()
        return self.challenge

    @property
    def component(self) -> str | None:
        """The current challenge's component (a stage type, ``redirect``, ``access-denied``, ...)."""
        return self.challenge.get("component")

    @property
    def errors(self) -> dict[str, list[dict[str, str]]]:
        """The current challenge's ``response_errors``: ``{field: [{code, message}]}``."""
        return self.challenge.get("response_errors") or {}

    async def submit(self, component: str | None = None, **fields: Any) -> dict[str, Any]:
        """Answer the current challenge (its component unless given) with ``fields``."""
        assert self.slug is not None, "call start() first"
        body = {"component": component or self.challenge.get("component"), **fields}
        response = await self.client.post(f"/api/v1/flows/{self.slug}/executor", json=body)
        self.status = response.status_code
        self.challenge = await response.get_json()
        return self.challenge


@pytest.fixture
def flow(keystage_client: Any) -> FlowDriver:
    return FlowDriver(keystage_client)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a server started by a test)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    """The HTTP status of a GET to ``url``; None while nothing answers there (a server still starting)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


@pytest.fixture(params=["postgres", "redis"])
def keystage_backend_settings(request: pytest.FixtureRequest, keystage_settings: Settings) -> Settings:
    """``keystage_settings`` once with the PostgreSQL key-value store and once with Redis (the
    ``redis_url`` fixture: skipped without Redis, failed in CI)."""
    if request.param == "redis":
        return dataclasses.replace(keystage_settings, redis_url=request.getfixturevalue("redis_url"))
    return keystage_settings


@contextlib.asynccontextmanager
async def opened_kernel(settings: Settings, **kwargs: Any) -> AsyncIterator[Keystage]:
    """A ``Keystage`` opened on ``settings`` for a ``async with`` block, closed afterwards."""
    kernel = Keystage(settings, **kwargs)
    await kernel.open()
    try:
        yield kernel
    finally:
        await kernel.close()



async def sign_in(browser: Any, next_path: str, username: str, password: str,
                  flow_slug: str = "default-authentication-flow") -> str:
    """Sign in through the JSON face of the (default) authentication flow with an httpx client;
    returns where the flow sends the user next."""
    url = f"/api/v1/flows/{flow_slug}/executor"
    challenge = (await browser.get(url, params={"next": next_path, "restart": "1"})).json()
    answers = {"identification": {"uid_field": username}, "password": {"password": password},
               "user_login": {"remember_me": False}}
    while challenge["component"] != "redirect":
        assert challenge["component"] in answers, challenge
        challenge = (await browser.post(url, json={"component": challenge["component"],
                                                   **answers[challenge["component"]]})).json()
    return str(challenge["to"])


def form_value(html: str, name: str) -> str:
    """The value of the first ``<input name="...">`` in a page (attributes in keystage's order)."""
    import html as html_module

    marker = f'name="{name}" value="'
    start = html.index(marker) + len(marker)
    return html_module.unescape(html[start:html.index('"', start)])


async def walk(browser: Any, url: str, *, username: str, password: str, consent: bool = True,
               max_steps: int = 20) -> Any:
    """Follow ``url`` like a browser: redirects, the authentication flow (signing in as
    ``username``) and consent pages (granting, or denying with ``consent=False``).

    Returns an ``httpx.URL`` when keystage sends the user to another site, or the
    ``httpx.Response`` of the first page that is neither (for the caller to look at).
    """
    import httpx

    own = browser.base_url.netloc.decode()
    for _ in range(max_steps):
        parts = urlsplit(url)
        if parts.netloc and parts.netloc != own:
            return httpx.URL(url)
        if parts.path.startswith("/flows/default-authentication-flow/"):
            from urllib.parse import parse_qs

            url = await sign_in(browser, parse_qs(parts.query)["next"][0], username, password)
            continue
        response = await browser.get(url)
        if response.status_code in (302, 303):
            url = response.headers["location"]
            continue
        if response.status_code == 200 and 'name="consent"' in response.text:
            form = {"csrf_token": form_value(response.text, "csrf_token"), "component": "consent",
                    "consent": "granted" if consent else "denied"}
            response = await browser.post(url, data=form)
            assert response.status_code in (302, 303), response.text
            url = response.headers["location"]
            continue
        return response
    raise AssertionError("too many redirects")
