"""The test kit plugin authors get (``keystage.engine.testing``) and the deprecation of hook arguments."""

from __future__ import annotations

import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from quart import Blueprint

from keystage.engine import (Continue, Event, FieldError, Invalid, KeystageDeprecationWarning, Stage, StageConfig,
                             StageResult, hookimpl, plugins, record_event)
from keystage.engine.testing import FlowDriver, make_flow, registered_plugin


async def test_user_and_group_factories(keystage: Any, user_factory: Any, group_factory: Any) -> None:
    parent = await group_factory("staff")
    admins = await group_factory(parent=parent, attributes={"level": 2})
    alice = await user_factory("alice", password="a long password", groups=[admins, "newcomers"])
    anonymous = await user_factory()
    assert anonymous.username != alice.username
    assert await keystage.users.check_password(alice, "a long password")
    groups = await keystage.users.group_ids(alice.id)
    assert {parent.id, admins.id} <= groups and len(groups) == 3, "nested groups and a group created by name"
    with_members = await group_factory(members=[anonymous])
    assert with_members.id in await keystage.users.group_ids(anonymous.id)


async def test_factories_use_the_apps_kernel_when_the_test_uses_the_app(
    keystage_app: Any, user_factory: Any, flow: FlowDriver
) -> None:
    await user_factory("bob", password="correct horse battery")
    await make_flow(keystage_app, "login", [("identification", {}), ("password", {}), ("user_login", {})])
    await flow.start("login")
    await flow.submit(uid_field="bob")
    assert (await flow.submit(password="correct horse battery"))["component"] == "redirect"


BLUEPRINT = """
version: 1
metadata: {name: kit}
entries:
  - model: flow
    identifiers: {slug: kit-flow}
    attrs: {name: Kit flow, designation: authentication, title: Kit}
  - model: stage
    identifiers: {name: kit-deny}
    attrs: {type: deny}
  - model: flow_stage_binding
    identifiers: {flow: !Find [flow, {slug: kit-flow}], stage: !Find [stage, {name: kit-deny}], order: 10}
"""


async def test_apply_blueprint(keystage_app: Any, apply_blueprint: Any, flow: FlowDriver, tmp_path: Path) -> None:
    report = await apply_blueprint(BLUEPRINT)
    assert report.summary().startswith("3 created")
    path = tmp_path / "again.yaml"
    path.write_text(BLUEPRINT)
    assert (await apply_blueprint(path)).summary().startswith("0 created, 0 updated, 0 deleted, 3 unchanged")
    assert (await flow.start("kit-flow"))["component"] == "access-denied"


class PinConfig(StageConfig):
    pin: str = "1234"


class PinStage(Stage):
    type_name = "kit_pin"
    Config = PinConfig
    template = "pin.html"

    config: PinConfig

    async def challenge(self) -> dict[str, Any]:
        return {"length": len(self.config.pin)}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        if response.get("pin") != self.config.pin:
            return Invalid({"pin": [FieldError("wrong", self.ctx.gettext("Wrong PIN"))]})
        return Continue()


def pin_plugin(tmp_path: Path) -> object:
    (tmp_path / "templates").mkdir(parents=True)
    (tmp_path / "templates" / "pin.html").write_text('<input name="pin"> {{ _("Wrong PIN") }}')
    (tmp_path / "locales" / "fr" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "locales" / "fr" / "LC_MESSAGES" / "kit_pin.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Language: fr\\n"\n\n'
        'msgid "Wrong PIN"\nmsgstr "Code PIN incorrect"\n')
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "0001_pins.sql").write_text("CREATE TABLE kit_pins (pin text);")
    PinStage.template_folder = tmp_path / "templates"
    bp = Blueprint("pins", __name__)

    @bp.get("/count")
    async def count() -> str:
        return "pins"

    return types.SimpleNamespace(
        register_stage_types=hookimpl(lambda: [PinStage]),
        register_locales=hookimpl(lambda: [("kit_pin", tmp_path / "locales")]),
        register_migrations=hookimpl(lambda: tmp_path / "sql"),
        register_routes=hookimpl(lambda: [bp]),
    )


async def test_registered_plugin_on_an_app_for_one_block(keystage_app: Any, tmp_path: Path) -> None:
    kernel = keystage_app.extensions["keystage"]
    client = keystage_app.test_client()
    async with registered_plugin(keystage_app, pin_plugin(tmp_path), "pins"):
        assert await kernel.pool.fetchval("SELECT count(*) FROM kit_pins") == 0, "its migration ran"
        await make_flow(keystage_app, "pin", [("kit_pin", {"pin": "42"})])
        flow = FlowDriver(client)
        assert (await flow.start("pin", locale="fr"))["length"] == 2
        await flow.submit(pin="nope")
        assert flow.errors == {"pin": [{"code": "wrong", "message": "Code PIN incorrect"}]}
        page = await (await client.get("/flows/pin/", headers={"Accept": "text/html"})).get_data(as_text=True)
        assert '<input name="pin">' in page and "Code PIN incorrect" in page
        assert (await flow.submit(pin="42"))["component"] == "redirect"
        assert await (await client.get("/-/plugins/pins/count")).get_data(as_text=True) == "pins"
    assert "kit_pin" not in kernel.stage_types
    assert (await client.get("/-/plugins/pins/count")).status_code == 404
    assert "pins" not in [info.name for info in kernel.plugins.list()]
    with registered_plugin(kernel, pin_plugin(tmp_path / "again"), "pins"):  # a kernel alone, and again
        assert "kit_pin" in kernel.stage_types


async def test_registered_plugin_is_undone_when_the_block_fails(keystage: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), registered_plugin(keystage, pin_plugin(tmp_path), "pins"):
        raise RuntimeError("the test failed inside")
    assert "kit_pin" not in keystage.stage_types


# -- deprecations ---------------------------------------------------------------------------------


async def test_a_deprecated_hook_argument_warns_once_naming_the_plugin(
    keystage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(plugins.DEPRECATED_ARGUMENTS, "on_event",
                        {"keystage": "use event.context instead"})
    seen: list[str] = []
    old_style = types.SimpleNamespace(on_event=hookimpl(lambda event, keystage: seen.append(event.action)))
    new_style = types.SimpleNamespace(on_event=hookimpl(lambda event: seen.append("new " + event.action)))
    with registered_plugin(keystage, old_style, "old-style"), registered_plugin(keystage, new_style, "new-style"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await record_event(keystage, Event("first"))
            await record_event(keystage, Event("second"))
    deprecations = [str(w.message) for w in caught if issubclass(w.category, KeystageDeprecationWarning)]
    assert not [m for m in deprecations if "new-style" in m], "only implementations naming the argument"
    ours = [m for m in deprecations if m.startswith("plugin old-style ")]
    assert len(ours) == 1, "once per plugin, hook and argument"
    message = ours[0]
    assert message.startswith("plugin old-style test: hook on_event: argument 'keystage' is deprecated")
    assert "API 2.0" in message and "use event.context instead" in message
    assert seen == ["first", "new first", "second", "new second"], "a deprecated argument still works"
