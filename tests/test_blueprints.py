"""Blueprints: apply in one transaction, export back, the shipped defaults, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pydantic
import pytest
import pytest_asyncio
from keystage.engine import hookimpl
from keystage.engine.blueprints import (
    DEFAULTS_DIRECTORY,
    BlueprintError,
    apply,
    apply_defaults,
    export,
    load,
)
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType
from keystage.engine.runtime import Keystage
from keystage.engine.stage import Stage, StageConfig
from keystage.engine.testing import base_settings, fresh_database

# -- stage types of our own: the real ones live in stages/ and may change ------------------------


class FormConfig(StageConfig):
    user_fields: list[Literal["username", "email"]] = ["username"]


class CounterConfig(StageConfig):
    failed_attempts_before_cancel: int = 5


class RangeConfig(StageConfig):
    low: int = 0
    high: int = 10

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> RangeConfig:
        if self.low > self.high:
            raise ValueError("low may not exceed high")
        return self


class RangeStage(Stage):
    type_name = "bp_test_range"
    Config = RangeConfig


class FormStage(Stage):
    type_name = "bp_test_form"
    Config = FormConfig


class CounterStage(Stage):
    type_name = "bp_test_counter"
    Config = CounterConfig


class EmptyStage(Stage):
    type_name = "bp_test_empty"


class ThresholdConfig(PolicyConfig):
    x: int = 0


class ThresholdPolicy(PolicyType):
    type_name = "bp_test_threshold"
    Config = ThresholdConfig

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        return PolicyResult(True)


class StagesPlugin:
    @hookimpl
    def register_stage_types(self) -> list[type]:
        return [FormStage, CounterStage, EmptyStage, RangeStage]

    @hookimpl
    def register_policy_types(self) -> list[type]:
        return [ThresholdPolicy]


def make_kernel(settings: Any) -> Keystage:
    return Keystage(settings, extra_plugins=[("bp-test-stages", StagesPlugin())])


@pytest_asyncio.fixture
async def kernel(keystage_settings: Any) -> Any:
    runtime = make_kernel(keystage_settings)
    await runtime.open()
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture
def other_database_url(keystage_server_url: str, keystage_template_database: str) -> Any:
    """A second fresh database, for applying an export somewhere empty."""
    with fresh_database(keystage_server_url, template=keystage_template_database) as url:
        yield url


SAMPLE = """\
version: 1
metadata: {name: sample}
entries:
  - model: group
    identifiers: {name: staff}
    attrs: {attributes: {team: core}}
  - model: group
    identifiers: {name: admins}
    attrs: {parent: staff, is_superuser: true}
  - model: user
    identifiers: {username: alice}
    attrs:
      email: alice@example.org
      display_name: Alice Liddell
      password: correct horse battery
      groups: [admins]
      attributes: {desk: 4}
  - model: user
    identifiers: {username: bob}
    attrs: {email: bob@example.org, is_active: false, groups: [staff, admins]}
  - model: flow
    identifiers: {slug: login}
    attrs: {name: Login, title: Sign in, designation: authentication, policy_engine_mode: all}
  - model: stage
    identifiers: {name: login-form}
    attrs: {type: bp_test_form, config: {user_fields: [username, email]}}
  - model: stage
    identifiers: {name: login-counter}
    attrs: {type: bp_test_counter, config: {failed_attempts_before_cancel: "3"}}
  - model: flow_stage_binding
    identifiers: {flow: login, stage: login-form, order: 10}
  - model: flow_stage_binding
    identifiers: {flow: !Find [flow, {slug: login}], stage: !Find [stage, {name: login-counter}], order: 20}
    attrs: {re_evaluate_policies: true, invalid_response_action: restart}
  - model: policy
    identifiers: {name: only-admins}
    attrs: {type: bp_test_threshold, config: {x: 1}}
  - model: policy_binding
    identifiers: {flow: login, group: admins}
    attrs: {order: 5, negate: true}
  - model: policy_binding
    identifiers:
      stage_binding: !Find [flow_stage_binding, {flow: login, stage: login-counter, order: 20}]
      policy: only-admins
    attrs: {timeout: 10, failure_result: true}
  - model: policy_binding
    identifiers: {flow: login, user: !Find [user, {username: alice}]}
"""

TABLES = ("flows", "stages", "flow_stage_bindings", "policies", "policy_bindings", "users", "groups",
          "group_memberships")


async def counts(runtime: Keystage) -> dict[str, int]:
    async with runtime.pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def apply_text(runtime: Keystage, *texts: str) -> Any:
    return await apply(runtime, [load(text, source=f"file{i}.yaml") for i, text in enumerate(texts, 1)])


# -- apply ---------------------------------------------------------------------------------------


async def test_apply_creates_every_model(kernel: Keystage) -> None:
    report = await apply_text(kernel, SAMPLE)
    assert [c.action for c in report.changes] == ["created"] * 13
    assert await counts(kernel) == {"flows": 1, "stages": 2, "flow_stage_bindings": 2, "policies": 1,
                                    "policy_bindings": 3, "users": 2, "groups": 2, "group_memberships": 3}
    pool = kernel.pool
    flow = await pool.fetchrow("SELECT * FROM flows WHERE slug = 'login'")
    assert (flow["name"], flow["title"], flow["designation"], flow["policy_engine_mode"]) == (
        "Login", "Sign in", "authentication", "all")
    # configs are stored validated: "3" became 3, and defaults left out stay defaults
    config = await pool.fetchval("SELECT config FROM stages WHERE name = 'login-counter'")
    assert json.loads(config) == {"failed_attempts_before_cancel": 3}
    bindings = await pool.fetch(
        """SELECT s.name, b."order", b.re_evaluate_policies, b.invalid_response_action FROM flow_stage_bindings b
           JOIN stages s ON s.id = b.stage_id ORDER BY b."order" """)
    assert [tuple(r) for r in bindings] == [("login-form", 10, False, "retry"), ("login-counter", 20, True, "restart")]
    parent = await pool.fetchval(
        "SELECT p.name FROM groups g JOIN groups p ON p.id = g.parent_id WHERE g.name = 'admins'")
    assert parent == "staff"
    alice = await kernel.users.find("alice")
    assert alice is not None and alice.display_name == "Alice Liddell" and alice.attributes == {"desk": 4}
    assert await kernel.users.check_password(alice, "correct horse battery")
    bob = await kernel.users.find("bob")
    assert bob is not None and not bob.is_active and bob.password_hash is None
    assert len(await kernel.users.group_ids(bob.id)) == 2
    on_stage_binding = await pool.fetchrow("SELECT * FROM policy_bindings WHERE stage_binding_id IS NOT NULL")
    assert (on_stage_binding["timeout"], on_stage_binding["failure_result"]) == (10, True)
    assert on_stage_binding["policy_id"] is not None


async def test_applying_again_changes_nothing(kernel: Keystage) -> None:
    await apply_text(kernel, SAMPLE)
    hash_before = await kernel.pool.fetchval("SELECT password_hash FROM users WHERE username = 'alice'")
    report = await apply_text(kernel, SAMPLE)
    assert report.changed == []
    assert await kernel.pool.fetchval("SELECT password_hash FROM users WHERE username = 'alice'") == hash_before
    # the first apply is in the audit log, the second (no change) is not
    logged = await kernel.pool.fetch("SELECT context FROM events WHERE action = 'blueprint_applied'")
    assert [json.loads(r["context"]) for r in logged] == [
        {"blueprints": ["sample"], "files": ["file1.yaml"], "defaults": False, "created": 13, "updated": 0,
         "deleted": 0}]


async def test_present_updates_only_what_attrs_name(kernel: Keystage) -> None:
    await apply_text(kernel, SAMPLE)
    report = await apply_text(kernel, """\
version: 1
metadata: {name: edit}
entries:
  - model: flow
    identifiers: {slug: login}
    attrs: {title: Hello}
  - model: user
    identifiers: {username: ALICE}
    attrs: {groups: [staff], password: another secret}
  - model: stage
    identifiers: {name: login-form}
    attrs: {config: {user_fields: [email]}}
""")
    assert [(c.model, c.action) for c in report.changes] == [("flow", "updated"), ("user", "updated"),
                                                             ("stage", "updated")]
    flow = await kernel.pool.fetchrow("SELECT name, title, policy_engine_mode FROM flows WHERE slug = 'login'")
    assert tuple(flow) == ("Login", "Hello", "all")
    alice = await kernel.users.find("alice")
    assert alice is not None and alice.email == "alice@example.org"
    assert await kernel.users.check_password(alice, "another secret")
    staff = await kernel.pool.fetchval("SELECT id FROM groups WHERE name = 'staff'")
    assert await kernel.pool.fetchval("SELECT array_agg(group_id) FROM group_memberships WHERE user_id = $1",
                                      alice.id) == [staff]
    config = await kernel.pool.fetchval("SELECT config FROM stages WHERE name = 'login-form'")
    assert json.loads(config) == {"user_fields": ["email"]}


async def test_state_created_and_absent(kernel: Keystage) -> None:
    await apply_text(kernel, SAMPLE)
    report = await apply_text(kernel, """\
version: 1
metadata: {name: states}
entries:
  - model: flow
    state: created
    identifiers: {slug: login}
    attrs: {name: Not this, designation: authentication}
  - model: flow
    state: created
    identifiers: {slug: logout}
    attrs: {name: Logout, designation: invalidation}
  - model: flow_stage_binding
    state: absent
    identifiers: {flow: login, stage: login-form, order: 10}
  - model: user
    state: absent
    identifiers: {username: bob}
  - model: group
    state: absent
    identifiers: {name: never-existed}
  - model: flow_stage_binding
    state: absent
    identifiers: {flow: !Find [flow, {slug: gone}], stage: login-form, order: 10}
""")
    assert [c.action for c in report.changes] == ["unchanged", "created", "deleted", "deleted", "unchanged",
                                                  "unchanged"]
    assert await kernel.pool.fetchval("SELECT name FROM flows WHERE slug = 'login'") == "Login"
    assert await kernel.pool.fetchval("SELECT designation FROM flows WHERE slug = 'logout'") == "invalidation"
    assert await kernel.pool.fetchval("SELECT count(*) FROM flow_stage_bindings") == 1
    assert await kernel.users.find("bob") is None
    # bob's policy bindings and memberships went with him; alice's stayed
    assert await kernel.pool.fetchval("SELECT count(*) FROM group_memberships") == 1


async def test_env_tag(kernel: Keystage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BP_TEST_TITLE", "From the environment")
    monkeypatch.delenv("BP_TEST_UNSET", raising=False)
    text = """\
version: 1
metadata: {name: env}
entries:
  - model: flow
    identifiers: {slug: env-flow}
    attrs: {name: !Env [BP_TEST_UNSET, fallback name], title: !Env BP_TEST_TITLE, designation: recovery}
"""
    await apply_text(kernel, text)
    row = await kernel.pool.fetchrow("SELECT name, title FROM flows WHERE slug = 'env-flow'")
    assert tuple(row) == ("fallback name", "From the environment")
    with pytest.raises(BlueprintError) as caught:
        load(text.replace("!Env BP_TEST_TITLE", "!Env BP_TEST_UNSET"), source="env.yaml")
    assert str(caught.value) == "env.yaml: entries[0] (flow): title: !Env BP_TEST_UNSET: not set, and no default given"


# -- errors: nothing applied, the message names the file, the entry and the field -----------------

GOOD_FIRST = """\
version: 1
metadata: {name: bad}
entries:
  - model: group
    identifiers: {name: created-then-rolled-back}
"""

BAD = {
    "wrong field type": (
        GOOD_FIRST + "  - model: flow_stage_binding\n    identifiers: {flow: login, stage: login-form, order: ten}\n",
        "file2.yaml: entries[1] (flow_stage_binding): order: Input should be a valid integer"),
    "boolean for an integer": (
        GOOD_FIRST + "  - model: policy_binding\n    identifiers: {flow: login, user: alice}\n    attrs: {order: true}\n",
        "file2.yaml: entries[1] (policy_binding): order: Input should be a valid integer, not a boolean"),
    "bad choice": (
        GOOD_FIRST + "  - model: flow\n    identifiers: {slug: login}\n    attrs: {designation: lunch}\n",
        "file2.yaml: entries[1] (flow): designation: Input should be 'authentication',"),
    "unknown model": (
        GOOD_FIRST + "  - model: flw\n    identifiers: {slug: x}\n",
        "file2.yaml: entries[1]: model: unknown model 'flw'"),
    "unknown attr": (
        GOOD_FIRST + "  - model: flow\n    identifiers: {slug: login}\n    attrs: {colour: red}\n",
        "file2.yaml: entries[1] (flow): colour: unknown attr of flow"),
    "unknown identifier": (
        GOOD_FIRST + "  - model: stage\n    identifiers: {type: bp_test_form}\n",
        "file2.yaml: entries[1] (stage): identifiers.type: not an identifier of stage"),
    "find of nothing": (
        GOOD_FIRST + "  - model: flow_stage_binding\n"
        "    identifiers: {flow: !Find [flow, {slug: nope}], stage: login-form, order: 30}\n",
        "file2.yaml: entries[1] (flow_stage_binding): flow: !Find [flow, slug=nope]: no such flow"),
    "find of the wrong model": (
        GOOD_FIRST + "  - model: flow_stage_binding\n"
        "    identifiers: {flow: !Find [stage, {name: login-form}], stage: login-form, order: 30}\n",
        "file2.yaml: entries[1] (flow_stage_binding): flow: !Find gives a stage, this field takes a flow"),
    "name of nothing": (
        GOOD_FIRST + "  - model: group\n    identifiers: {name: x}\n    attrs: {parent: nope}\n",
        "file2.yaml: entries[1] (group): parent: no group with name 'nope'"),
    "unknown stage type": (
        GOOD_FIRST + "  - model: stage\n    identifiers: {name: s}\n    attrs: {type: teleport}\n",
        "file2.yaml: entries[1] (stage): type: unknown stage type 'teleport'"),
    "bad stage config": (
        GOOD_FIRST + "  - model: stage\n    identifiers: {name: login-form}\n"
        "    attrs: {config: {user_fields: [phone]}}\n",
        "file2.yaml: entries[1] (stage): config.user_fields.0: Input should be 'username' or 'email'"),
    "unknown policy type": (
        GOOD_FIRST + "  - model: policy\n    identifiers: {name: p}\n    attrs: {type: teleport}\n",
        "file2.yaml: entries[1] (policy): type: unknown policy type 'teleport'"),
    "bad policy config": (
        GOOD_FIRST + "  - model: policy\n    identifiers: {name: only-admins}\n    attrs: {config: {x: many}}\n",
        "file2.yaml: entries[1] (policy): config.x: Input should be a valid integer"),
    "stage config as a whole": (
        GOOD_FIRST + "  - model: stage\n    identifiers: {name: r}\n    attrs: {type: bp_test_range, config: {low: 5, high: 1}}\n",
        "file2.yaml: entries[1] (stage): config: low may not exceed high"),
    "unknown stage config key": (
        GOOD_FIRST + "  - model: stage\n    identifiers: {name: s2}\n    attrs: {type: bp_test_empty, config: {x: 1}}\n",
        "file2.yaml: entries[1] (stage): config.x: Extra inputs are not permitted"),
    "missing required field": (
        GOOD_FIRST + "  - model: flow\n    identifiers: {slug: new-flow}\n    attrs: {name: New}\n",
        "file2.yaml: entries[1] (flow): designation: required to create a flow"),
    "two subjects": (
        GOOD_FIRST + "  - model: policy_binding\n    identifiers: {flow: login, user: alice, group: staff}\n",
        "file2.yaml: entries[1] (policy_binding): identifiers: need exactly one subject"),
    "group cycle": (
        GOOD_FIRST + "  - model: group\n    identifiers: {name: staff}\n    attrs: {parent: admins}\n",
        "file2.yaml: entries[1] (group): parent: would make the group its own ancestor"),
    "email taken": (
        GOOD_FIRST + "  - model: user\n    identifiers: {username: carol}\n    attrs: {email: ALICE@example.org}\n",
        "file2.yaml: entries[1] (user): email: already taken"),
    "not JSON": (
        GOOD_FIRST + "  - model: user\n    identifiers: {username: carol}\n    attrs: {attributes: {born: 2001-02-03}}\n",
        "file2.yaml: entries[1] (user): attributes: not representable as JSON: Object of type date"),
    "empty password": (
        GOOD_FIRST + "  - model: user\n    identifiers: {username: alice}\n    attrs: {password: ''}\n",
        "file2.yaml: entries[1] (user): password: may not be empty"),
    "bad email": (
        GOOD_FIRST + "  - model: user\n    identifiers: {username: carol}\n    attrs: {email: not-an-address}\n",
        "file2.yaml: entries[1] (user): email: not an email address"),
    "yaml syntax": (
        GOOD_FIRST + "  - model: flow\n    identifiers: {slug: [login}\n",
        "file2.yaml: line 7, column"),
    "duplicate key": (
        GOOD_FIRST + "  - model: flow\n    identifiers: {slug: login}\n    attrs: {title: a, title: b}\n",
        "file2.yaml: line 8, column 23: duplicate key 'title'"),
    "version": (GOOD_FIRST.replace("version: 1", "version: 2"), "file2.yaml: version: must be 1, not 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_blueprint_changes_nothing(kernel: Keystage, case: str) -> None:
    await apply_text(kernel, SAMPLE)
    before, exported = await counts(kernel), await export(kernel, include_password_hashes=True)
    text, message = BAD[case]
    with pytest.raises(BlueprintError) as caught:
        # the first file is fine on its own; the second file's error undoes it too
        await apply_text(kernel, GOOD_FIRST.replace("created-then-rolled-back", "from-file-one"), text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)
    assert await counts(kernel) == before
    assert await export(kernel, include_password_hashes=True) == exported


async def test_python_tags_are_refused(kernel: Keystage, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = GOOD_FIRST + f"  - model: flow\n    identifiers: {{slug: !!python/object/apply:os.system ['touch {marker}']}}\n"
    with pytest.raises(BlueprintError) as caught:
        load(text, source="evil.yaml")
    assert str(caught.value).startswith(
        "evil.yaml: line 7, column 25: tag tag:yaml.org,2002:python/object/apply:os.system is not allowed")
    assert not marker.exists()
    assert await counts(kernel) == dict.fromkeys(TABLES, 0)


def test_aliases_cannot_explode() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1},"
                     f" *a{i - 1}, *a{i - 1}, *a{i - 1}]")
    text = ("version: 1\nmetadata: {name: laughs}\nentries:\n  - model: stage\n    identifiers: {name: s}\n"
            "    attrs:\n      type: bp_test_empty\n      config:\n" + "".join(f"        {line}\n" for line in lines))
    with pytest.raises(BlueprintError, match=r"laughs.yaml: entries\[0\] \(stage\): config\.a\d.*more than 200000"):
        load(text, source="laughs.yaml")


# -- export --------------------------------------------------------------------------------------


async def test_export_then_apply_on_an_empty_database_reproduces_it(
    kernel: Keystage, other_database_url: str, tmp_path: Path
) -> None:
    await apply_text(kernel, SAMPLE)
    first = await export(kernel)
    assert "!Find [flow, {slug: login}]" in first
    assert "stage_binding: !Find [flow_stage_binding, {flow: !Find [flow, {slug: login}], stage: !Find" in first

    other = make_kernel(base_settings(other_database_url, tmp_path / "other"))
    await other.open()
    try:
        assert await counts(other) == dict.fromkeys(TABLES, 0)
        report = await apply(other, [load(first, source="export.yaml")])
        assert {c.action for c in report.changes} == {"created"}
        assert await counts(other) == await counts(kernel)
        assert await export(other) == first
        # hashes were not exported, so nobody has a password on the other side
        assert await other.pool.fetchval("SELECT count(*) FROM users WHERE password_hash IS NOT NULL") == 0
    finally:
        await other.close()


async def test_users_are_exported_without_password_hashes_unless_asked(kernel: Keystage) -> None:
    await apply_text(kernel, SAMPLE)
    stored = await kernel.pool.fetchval("SELECT password_hash FROM users WHERE username = 'alice'")
    assert stored.startswith("$argon2id$")
    plain = await export(kernel)
    assert "password" not in plain and stored not in plain
    with_hashes = await export(kernel, include_password_hashes=True)
    assert f"password_hash: {stored}" in with_hashes
    # applying an export with hashes carries the password over
    await kernel.pool.execute("UPDATE users SET password_hash = NULL")
    await apply(kernel, [load(with_hashes)])
    alice = await kernel.users.find("alice")
    assert alice is not None and await kernel.users.check_password(alice, "correct horse battery")


# -- defaults ------------------------------------------------------------------------------------

TEST_DEFAULTS = {
    "a.yaml": """\
version: 1
metadata: {name: test-default-a}
entries:
  - model: flow
    state: created
    identifiers: {slug: default-a}
    attrs: {name: A, title: Original, designation: authentication}
  - model: stage
    state: created
    identifiers: {name: default-a-form}
    attrs: {type: bp_test_form}
  - model: flow_stage_binding
    state: created
    identifiers: {flow: default-a, stage: default-a-form, order: 10}
""",
    "b.yaml": """\
version: 1
metadata: {name: test-default-b}
entries:
  - model: group
    state: created
    identifiers: {name: default-b-group}
""",
}


@pytest.fixture
def defaults_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "defaults"
    directory.mkdir()
    for name, text in TEST_DEFAULTS.items():
        (directory / name).write_text(text)
    return directory


async def test_apply_defaults_once_and_keeps_admin_edits(kernel: Keystage, defaults_directory: Path) -> None:
    assert await apply_defaults(kernel, directory=defaults_directory) == ["test-default-a", "test-default-b"]
    await kernel.pool.execute("UPDATE flows SET title = 'Edited by the admin' WHERE slug = 'default-a'")
    await kernel.pool.execute("DELETE FROM groups WHERE name = 'default-b-group'")
    assert await apply_defaults(kernel, directory=defaults_directory) == []
    assert await kernel.pool.fetchval("SELECT title FROM flows WHERE slug = 'default-a'") == "Edited by the admin"
    assert await kernel.pool.fetchval("SELECT count(*) FROM groups") == 0
    rows = await kernel.pool.fetch("SELECT name, checksum FROM blueprint_instances ORDER BY name")
    assert [r["name"] for r in rows] == ["test-default-a", "test-default-b"]
    assert rows[0]["checksum"] == load(defaults_directory / "a.yaml").checksum
    # a default added by a later version is applied, the others still are not
    (defaults_directory / "c.yaml").write_text(TEST_DEFAULTS["b.yaml"].replace("-b", "-c"))
    assert await apply_defaults(kernel, directory=defaults_directory) == ["test-default-c"]


async def test_apply_defaults_from_two_workers_at_once(keystage_settings: Any, defaults_directory: Path) -> None:
    workers = [make_kernel(keystage_settings) for _ in range(2)]
    for worker in workers:
        await worker.open()
    try:
        results = await asyncio.gather(*(apply_defaults(w, directory=defaults_directory) for w in workers))
        assert sorted(results) == [[], ["test-default-a", "test-default-b"]]
        assert await workers[0].pool.fetchval("SELECT count(*) FROM blueprint_instances") == 2
        assert await counts(workers[0]) == {**dict.fromkeys(TABLES, 0), "flows": 1, "stages": 1,
                                            "flow_stage_bindings": 1, "groups": 1}
    finally:
        for worker in workers:
            await worker.close()


async def test_a_failing_default_applies_nothing(kernel: Keystage, defaults_directory: Path) -> None:
    (defaults_directory / "z.yaml").write_text(TEST_DEFAULTS["b.yaml"].replace("-b", "-z").replace(
        "model: group", "model: stage").replace("identifiers: {name: default-z-group}",
                                                "identifiers: {name: z}\n    attrs: {type: missing}"))
    with pytest.raises(BlueprintError, match=r"^z.yaml: entries\[0\] \(stage\): type: unknown stage type 'missing'"):
        await apply_defaults(kernel, directory=defaults_directory)
    assert await kernel.pool.fetchval("SELECT count(*) FROM blueprint_instances") == 0
    assert await counts(kernel) == dict.fromkeys(TABLES, 0)


def test_shipped_defaults_are_well_formed() -> None:
    loaded = {path.name: load(path) for path in sorted(DEFAULTS_DIRECTORY.glob("*.yaml"))}
    assert {b.name for b in loaded.values()} == {
        "default-authentication-flow", "default-invalidation-flow", "default-enrollment-flow", "initial-setup",
        "default-provider-authorization-flows", "default-authenticator-setup-flows"}
    for name, blueprint in loaded.items():
        assert name == f"{blueprint.name}.yaml"
        assert {e.state for e in blueprint.entries} == {"created"}


async def test_shipped_defaults_apply_with_the_bundled_stage_types(keystage: Keystage) -> None:
    applied = await apply_defaults(keystage)
    assert sorted(applied) == ["default-authentication-flow", "default-authenticator-setup-flows",
                               "default-enrollment-flow", "default-invalidation-flow",
                               "default-provider-authorization-flows", "initial-setup"]
    assert await apply_defaults(keystage) == []
    flows = {r["slug"]: (r["designation"], r["title"], r["denied_action"])
             for r in await keystage.pool.fetch("SELECT * FROM flows")}
    assert flows == {
        "default-authentication-flow": ("authentication", "Welcome to keystage!", "message"),
        "default-authenticator-totp-setup": ("stage_configuration", "Authenticator app", "message"),
        "default-authenticator-static-setup": ("stage_configuration", "Recovery codes", "message"),
        "default-authenticator-webauthn-setup": ("stage_configuration", "Security key or passkey", "message"),
        "default-invalidation-flow": ("invalidation", "", "message"),
        "default-enrollment-flow": ("enrollment", "Create your account", "message"),
        "initial-setup": ("stage_configuration", "Welcome to keystage! Create the first administrator.", "message"),
        "default-provider-authorization-explicit-consent": ("authorization", "", "message"),
        "default-provider-authorization-implicit-consent": ("authorization", "", "message"),
    }
    rows = await keystage.pool.fetch(
        """SELECT f.slug, b."order", s.name, s.type FROM flow_stage_bindings b JOIN flows f ON f.id = b.flow_id
           JOIN stages s ON s.id = b.stage_id ORDER BY f.slug, b."order" """)
    assert [tuple(r) for r in rows] == [
        ("default-authentication-flow", 10, "default-authentication-identification", "identification"),
        ("default-authentication-flow", 20, "default-authentication-password", "password"),
        ("default-authentication-flow", 100, "default-authentication-login", "user_login"),
        ("default-authenticator-static-setup", 10, "default-authenticator-static-setup", "authenticator_static"),
        ("default-authenticator-totp-setup", 10, "default-authenticator-totp-setup", "authenticator_totp"),
        ("default-authenticator-webauthn-setup", 10, "default-authenticator-webauthn-setup", "authenticator_webauthn"),
        ("default-enrollment-flow", 10, "default-enrollment-prompt", "prompt"),
        ("default-enrollment-flow", 20, "default-enrollment-user-write", "user_write"),
        ("default-enrollment-flow", 100, "default-enrollment-login", "user_login"),
        ("default-invalidation-flow", 0, "default-invalidation-logout", "user_logout"),
        ("default-provider-authorization-explicit-consent", 0, "default-provider-authorization-consent", "consent"),
        ("default-provider-authorization-implicit-consent", 0, "default-provider-authorization-implicit", "consent"),
        ("initial-setup", 10, "initial-setup-prompt", "prompt"),
        ("initial-setup", 20, "initial-setup-user-write", "user_write"),
        ("initial-setup", 100, "initial-setup-login", "user_login"),
    ]
    bindings = await keystage.pool.fetch(
        """SELECT f.slug, p.name, p.type, pb."order" FROM policy_bindings pb JOIN flows f ON f.id = pb.flow_id
           JOIN policies p ON p.id = pb.policy_id ORDER BY f.slug""")
    assert [tuple(b) for b in bindings] == [
        ("default-enrollment-flow", "default-enrollment-closed", "static", 0),
        ("initial-setup", "initial-setup-no-superuser", "superuser_absent", 0),
    ]
    write = await keystage.pool.fetchval("SELECT config FROM stages WHERE name = 'initial-setup-user-write'")
    assert json.loads(write)["superuser"] is True


# -- CLI -----------------------------------------------------------------------------------------


def run_cli(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTAGE_")}
    # the shipped defaults (applied at start) would be noise in what these tests count
    env.update(KEYSTAGE_DATABASE_URL=database_url, KEYSTAGE_DATA_DIR=str(data_dir),
               KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS="0")
    keystage = Path(sys.executable).with_name("keystage")
    return subprocess.run([str(keystage), *args], env=env, capture_output=True, text=True, timeout=120)


CLI_GOOD = """\
version: 1
metadata: {name: cli}
entries:
  - model: group
    identifiers: {name: cli-group}
  - model: flow
    identifiers: {slug: cli-flow}
    attrs: {name: CLI, designation: authentication}
"""


def test_cli_apply_and_export(keystage_database_url: str, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(CLI_GOOD)
    result = run_cli(keystage_database_url, tmp_path / "data", "blueprint", "apply", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"created group name=cli-group ({good}: entries[0])",
        f"created flow slug=cli-flow ({good}: entries[1])",
        "2 created, 0 updated, 0 deleted, 0 unchanged",
    ]
    out = tmp_path / "export.yaml"
    result = run_cli(keystage_database_url, tmp_path / "data", "blueprint", "export", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert (out.stat().st_mode & 0o077) == 0
    exported = load(out)
    assert [(e.model, e.identifiers) for e in exported.entries] == [
        ("group", {"name": "cli-group"}), ("flow", {"slug": "cli-flow"})]


def test_cli_apply_bad_file_exits_2_with_one_line(keystage_database_url: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(CLI_GOOD)
    bad.write_text(CLI_GOOD.replace("cli-", "other-").replace("designation: authentication", "designation: 7"))
    result = run_cli(keystage_database_url, tmp_path / "data", "blueprint", "apply", str(good), str(bad))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"keystage: {bad}: entries[1] (flow): designation: Input should be 'authentication', 'authorization', "
        "'enrollment', 'invalidation', 'recovery', 'stage_configuration' or 'unenrollment'"]

    async def nothing_applied() -> None:
        conn = await asyncpg.connect(keystage_database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM groups") == 0
            assert await conn.fetchval("SELECT count(*) FROM flows") == 0
        finally:
            await conn.close()

    asyncio.run(nothing_applied())
    missing = run_cli(keystage_database_url, tmp_path / "data", "blueprint", "apply", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [f"keystage: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]
