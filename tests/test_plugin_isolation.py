"""A plugin cannot take the kernel or other plugins down, nor shadow their routes, templates or files.

One well-behaved plugin (``good``) uses every hook the kernel calls; a second plugin breaks one
hook at a time (raises, or answers with the wrong type). ``good`` must keep working and the log
must name the broken plugin. Then a plugin tries to shadow a kernel route, template and static
file, and another plugin's route.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any

import pytest
from quart import Blueprint, render_template

from keystage.engine import (Continue, Event, PluginError, PolicyResult, PolicyType, ProviderType, Stage, hookimpl,
                             record_event)
from keystage.engine.app import create_app
from keystage.engine.applications import provider_types
from keystage.engine.runtime import Keystage
from keystage.engine.sandbox import collect_helpers
from keystage.engine.templates import WEB_TEMPLATES

GOOD_PO = '''msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\\n"
"Language: de\\n"

msgid "Good morning"
msgstr "Guten Morgen"

msgid "Continue"
msgstr "PLUGIN CONTINUE"
'''


class GoodStage(Stage):
    type_name = "good_stage"

    async def submit(self, response: Any) -> Continue:
        return Continue()


class GoodPolicy(PolicyType):
    type_name = "good_policy"

    async def passes(self, request: Any) -> PolicyResult:
        return PolicyResult(True)


class GoodProvider(ProviderType):
    type_name = "good_provider"


def good_helper(value: int) -> int:
    return value + 1


def make_good(tmp_path: Path) -> types.ModuleType:
    """A plugin package (a module with ``__path__``) with a catalog, a migration, a route and listeners."""
    root = tmp_path / "good_pkg"
    (root / "locales" / "de" / "LC_MESSAGES").mkdir(parents=True)
    (root / "locales" / "de" / "LC_MESSAGES" / "good.po").write_text(GOOD_PO)
    (root / "sql").mkdir()
    (root / "sql" / "0001_good.sql").write_text("CREATE TABLE good_things (id int PRIMARY KEY);")
    good = types.ModuleType("good_pkg")
    good.__path__ = [str(root)]  # type: ignore[attr-defined]
    good.events = []  # type: ignore[attr-defined]
    good.stopped = False  # type: ignore[attr-defined]
    bp = Blueprint("pages", __name__)

    @bp.get("/hello")
    async def hello() -> str:
        return "good hello"

    @hookimpl
    def register_stage_types() -> list[type]:
        return [GoodStage]

    @hookimpl
    def register_policy_types() -> list[type]:
        return [GoodPolicy]

    @hookimpl
    def register_provider_types() -> list[type]:
        return [GoodProvider]

    @hookimpl
    def register_routes() -> list[Blueprint]:
        return [bp]

    @hookimpl
    def register_locales() -> list[tuple[str, Path]]:
        return [("good", root / "locales")]

    @hookimpl
    def register_migrations() -> Path:
        return root / "sql"

    @hookimpl
    def register_expression_helpers() -> dict[str, Any]:
        return {"good_helper": good_helper}

    @hookimpl
    def on_event(event: Event) -> None:
        good.events.append(event.action)  # type: ignore[attr-defined]

    @hookimpl
    def after_serving() -> None:
        good.stopped = True  # type: ignore[attr-defined]

    for function in (register_stage_types, register_policy_types, register_provider_types, register_routes,
                     register_locales, register_migrations, register_expression_helpers, on_event, after_serving):
        setattr(good, function.__name__, function)
    return good


async def assert_good_works(app: Any, kernel: Keystage, good: types.ModuleType) -> None:
    assert "good_stage" in kernel.stage_types and "good_policy" in kernel.policy_types
    assert "good_provider" in provider_types(kernel)
    response = await app.test_client().get("/-/plugins/good/hello")
    assert response.status_code == 200 and await response.get_data(as_text=True) == "good hello"
    assert app.extensions["keystage_catalogs"].translations("de").gettext("Good morning") == "Guten Morgen"
    assert await kernel.pool.fetchval("SELECT to_regclass('good_things') IS NOT NULL")
    assert "good_helper" in [spec.name for spec in collect_helpers(kernel.plugins)]
    await record_event(kernel, Event("isolation_check"))
    assert good.events == ["isolation_check"]
    assert await kernel.passwords.hash("a password") != "a password"


def plugin_with(hook: str, body: Any) -> object:
    """A plugin object implementing only ``hook``, whose implementation runs ``body()``."""
    arguments = {"on_event": "event", "after_serving": "app", "register_password_hashers": "settings"}
    namespace: dict[str, Any] = {"body": body}
    exec(f"def {hook}({arguments.get(hook, '')}):\n    return body()", namespace)
    return types.SimpleNamespace(**{hook: hookimpl(namespace[hook])})


def boom() -> Any:
    raise RuntimeError("boom from the broken plugin")


HOOKS = ["register_stage_types", "register_policy_types", "register_provider_types", "register_routes",
         "register_locales", "register_migrations", "register_expression_helpers", "register_password_hashers",
         "on_event", "after_serving"]


async def run_with(settings: Any, plugins: list[tuple[str, object]], good: types.ModuleType) -> None:
    kernel = Keystage(settings, extra_plugins=plugins)
    app = create_app(settings, keystage=kernel)
    async with app.test_app():
        await assert_good_works(app, kernel, good)
    assert good.stopped, "the good plugin's after_serving ran"


@pytest.mark.parametrize("hook", HOOKS)
async def test_a_raising_hook_is_logged_by_name_and_others_still_work(
    hook: str, keystage_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_good(tmp_path)
    with caplog.at_level(logging.ERROR, logger="keystage.plugins"):
        await run_with(keystage_settings, [("broken", plugin_with(hook, boom)), ("good", good)], good)
    assert f"plugin broken: hook {hook} raised" in caplog.text


WRONG_ANSWERS = [
    ("register_stage_types", lambda: [object, "identification", GoodPolicy], "not a stage class"),
    ("register_policy_types", lambda: [GoodStage, 42], "not a policy class"),
    ("register_provider_types", lambda: [GoodPolicy, "oidc"], "not a provider class"),
    ("register_routes", lambda: ["/evil", object()], "not a Quart Blueprint"),
    ("register_locales", lambda: [("keystage", "/tmp"), "de"], "not a (domain, directory) pair"),
    ("register_migrations", lambda: [42, None], "not a directory path"),
    ("register_password_hashers", lambda: ["plaintext"], "not a PasswordHasher"),
]


@pytest.mark.parametrize(("hook", "answer", "logged"), WRONG_ANSWERS, ids=[w[0] for w in WRONG_ANSWERS])
async def test_a_wrong_answer_is_dropped_and_logged_by_name(
    hook: str, answer: Any, logged: str, keystage_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_good(tmp_path)
    with caplog.at_level(logging.ERROR, logger="keystage.plugins"):
        await run_with(keystage_settings, [("wrong", plugin_with(hook, answer)), ("good", good)], good)
    assert f"plugin wrong: {hook} returned" in caplog.text and logged in caplog.text


def test_kernel_catalog_domain_cannot_be_replaced(keystage_settings: Any, tmp_path: Path) -> None:
    # The wrong-answer test above includes ("keystage", ...); here: the kernel's own text stays.
    good = make_good(tmp_path)
    app = create_app(keystage_settings, keystage=Keystage(keystage_settings, extra_plugins=[("good", good)]))
    german = app.extensions["keystage_catalogs"].translations("de")
    assert german.gettext("Continue") == "Weiter", "a plugin's catalog must not change a kernel string"
    assert german.gettext("Good morning") == "Guten Morgen"


def test_wrong_expression_helpers_stop_startup_naming_the_plugin(keystage_settings: Any) -> None:
    # Helpers run in the sandbox's worker processes: one that cannot get there is refused up front.
    wrong = plugin_with("register_expression_helpers", lambda: ["not", "a dict"])
    with pytest.raises(PluginError, match="plugin wrong: register_expression_helpers returned list"):
        Keystage(keystage_settings, extra_plugins=[("wrong", wrong)])
    closure = plugin_with("register_expression_helpers", lambda: {"inline": lambda: 1})
    with pytest.raises(PluginError, match="plugin closure: expression helper 'inline'"):
        Keystage(keystage_settings, extra_plugins=[("closure", closure)])


async def test_raising_before_serving_stops_startup_naming_the_plugin(keystage_settings: Any) -> None:
    kernel = Keystage(keystage_settings, extra_plugins=[("broken", plugin_with("before_serving", boom))])
    app = create_app(keystage_settings, keystage=kernel)
    with pytest.raises(Exception) as caught:  # noqa: PT011  (Quart wraps it in a LifespanError)
        async with app.test_app():
            pass
    await kernel.close()
    assert "plugin broken test: before_serving failed: RuntimeError: boom" in str(caught.value)


def test_raising_check_config_stops_startup_naming_the_plugin(keystage_settings: Any) -> None:
    plugin = types.SimpleNamespace(check_config=hookimpl(lambda config: boom()))
    with pytest.raises(PluginError, match="plugin broken .*check_config failed: RuntimeError: boom"):
        Keystage(keystage_settings, extra_plugins=[("broken", plugin)])


# -- namespacing -----------------------------------------------------------------------------------


def routes_plugin(*blueprints: Blueprint, package: Path | None = None) -> types.ModuleType:
    plugin = types.ModuleType("routes_plugin")
    if package is not None:
        plugin.__path__ = [str(package)]  # type: ignore[attr-defined]
    plugin.register_routes = hookimpl(lambda: list(blueprints))  # type: ignore[attr-defined]
    return plugin


def shadowing_blueprint(name: str = "shadow") -> Blueprint:
    bp = Blueprint(name, __name__)

    @bp.get("/-/health/live/")
    async def live() -> str:
        return "shadowed health"

    @bp.route("/flows/<slug>/", methods=["GET", "POST"])
    async def flows(slug: str) -> str:
        return "shadowed flow"

    @bp.get("/same")
    async def same() -> str:
        return f"{name} same"

    return bp


async def test_plugin_routes_live_under_their_prefix_and_cannot_shadow(keystage_settings: Any) -> None:
    kernel = Keystage(keystage_settings, extra_plugins=[
        ("evil", routes_plugin(shadowing_blueprint())), ("other", routes_plugin(shadowing_blueprint()))])
    app = create_app(keystage_settings, keystage=kernel)
    async with app.test_app():
        client = app.test_client()
        live = await client.get("/-/health/live/")
        assert live.status_code == 200 and "shadowed" not in await live.get_data(as_text=True)
        flow = await client.get("/flows/anything/", headers={"Accept": "text/html"})
        assert "shadowed" not in await flow.get_data(as_text=True)
        assert await (await client.get("/-/plugins/evil/-/health/live/")).get_data(as_text=True) == "shadowed health"
        # Two plugins may use the same blueprint name and the same paths: each has its own prefix.
        assert await (await client.get("/-/plugins/evil/same")).get_data(as_text=True) == "shadow same"
        assert (await client.get("/-/plugins/other/same")).status_code == 200
        assert (await client.get("/same")).status_code == 404


def test_a_route_colliding_with_the_kernel_is_refused_naming_both(keystage_settings: Any) -> None:
    kernel = Keystage(keystage_settings, extra_plugins=[("evil", routes_plugin(shadowing_blueprint()))])
    # Bundled plugins mount their routes as declared (protocols need fixed paths); still no shadowing.
    kernel.plugins.infos["evil"].origin = "bundled"
    with pytest.raises(PluginError) as caught:
        create_app(keystage_settings, keystage=kernel)
    message = str(caught.value)
    assert "/-/health/live/" in message and "plugin evil" in message and "the kernel" in message
    assert "keystage_health.live" in message


def test_a_route_colliding_within_a_plugin_is_refused_naming_both(keystage_settings: Any) -> None:
    plugin = routes_plugin(shadowing_blueprint("one"), shadowing_blueprint("two"))
    kernel = Keystage(keystage_settings, extra_plugins=[("twice", plugin)])
    with pytest.raises(PluginError, match=r"route /-/plugins/twice/-/health/live/ .*plugin_twice\.two\.live.*"
                                          r"plugin_twice\.one\.live"):
        create_app(keystage_settings, keystage=kernel)


def test_a_plugin_name_must_fit_a_url_segment(keystage_settings: Any) -> None:
    with pytest.raises(PluginError, match="a plugin name is"):
        Keystage(keystage_settings, extra_plugins=[("../evil", routes_plugin())])


async def test_templates_and_static_files_are_addressed_by_plugin_name(keystage_settings: Any, tmp_path: Path) -> None:
    package = tmp_path / "evil_pkg"
    (package / "templates").mkdir(parents=True)
    (package / "templates" / "base.html").write_text("EVIL BASE")
    (package / "templates" / "page.html").write_text("{% include 'evil/base.html' %} / {{ _('Continue') }}")
    (package / "static").mkdir()
    (package / "static" / "keystage.css").write_text("body { display: none }")
    bp = Blueprint("pages", __name__, template_folder=str(tmp_path / "bp_templates"))
    (tmp_path / "bp_templates").mkdir()
    (tmp_path / "bp_templates" / "not_found.html").write_text("EVIL NOT FOUND")

    @bp.get("/page")
    async def page() -> str:
        return await render_template("evil/page.html", _=lambda s: s)

    kernel = Keystage(keystage_settings, extra_plugins=[("evil", routes_plugin(bp, package=package))])
    app = create_app(keystage_settings, keystage=kernel)
    async with app.test_app():
        client = app.test_client()
        templates = app.jinja_env
        assert await templates.get_template("evil/base.html").render_async() == "EVIL BASE"
        assert await templates.get_template("evil/not_found.html").render_async() == "EVIL NOT FOUND"
        # Unprefixed names are the kernel's, whatever a plugin or its blueprint ships.
        for name in ("base.html", "not_found.html"):
            assert templates.get_template(name).filename == str(WEB_TEMPLATES / name)
        missing = await client.get("/nothing/here", headers={"Accept": "text/html"})
        assert missing.status_code == 404 and "EVIL" not in await missing.get_data(as_text=True)
        assert await (await client.get("/-/plugins/evil/page")).get_data(as_text=True) == "EVIL BASE / Continue"
        css = await client.get("/-/plugins/evil/static/keystage.css")
        assert css.status_code == 200 and "display: none" in await css.get_data(as_text=True)
        kernel_css = await client.get("/-/static/keystage.css")
        assert "display: none" not in await kernel_css.get_data(as_text=True)
