"""The policy engine and the bundled non-expression policy types, against a real database."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar

import pytest

from keystage.engine import policy_engine
from keystage.engine.app import create_app
from keystage.engine.hookspecs import hookimpl
from keystage.engine.policy import PolicyConfig, PolicyRequest, PolicyResult, PolicyType
from keystage.engine.runtime import Keystage
from keystage.engine.testing import FlowDriver, make_flow


class ConstantConfig(PolicyConfig):
    value: bool = True


class Constant(PolicyType):
    type_name = "test_constant"
    Config = ConstantConfig
    cacheable = True
    calls: ClassVar[int] = 0

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        type(self).calls += 1
        return PolicyResult(self.config.value, () if self.config.value else ("constant says no",))


class InGroupConfig(PolicyConfig):
    group: str


class InGroup(PolicyType):
    """Cacheable and dependent on group membership: the invalidation test's subject."""

    type_name = "test_in_group"
    Config = InGroupConfig
    cacheable = True

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        if request.user is None:
            return PolicyResult(False)
        ids = await request.keystage.users.group_ids(request.user.id)
        gid = await request.keystage.pool.fetchval("SELECT id FROM groups WHERE name = $1", self.config.group)
        return PolicyResult(gid in ids)


class Slow(PolicyType):
    type_name = "test_slow"

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        await asyncio.sleep(30)
        return PolicyResult(True)


class Raises(PolicyType):
    type_name = "test_raises"

    async def passes(self, request: PolicyRequest) -> PolicyResult:
        raise ValueError("broken policy")


class WrongType(PolicyType):
    type_name = "test_wrong_type"

    async def passes(self, request: PolicyRequest) -> Any:
        return "yes"


class TestTypes:
    @hookimpl
    def register_policy_types(self) -> list[type[PolicyType]]:
        return [Constant, InGroup, Slow, Raises, WrongType]


@pytest.fixture
async def kernel(keystage_settings: Any) -> Any:
    ks = Keystage(keystage_settings, extra_plugins=[("test-policy-types", TestTypes())])
    await ks.open()
    yield ks
    await ks.close()


async def policy(ks: Keystage, name: str, type_: str, config: dict[str, Any] | None = None) -> int:
    return await ks.pool.fetchval("INSERT INTO policies (name, type, config) VALUES ($1, $2, $3::jsonb) RETURNING id",
                                  name, type_, json.dumps(config or {}))


async def flow_with(ks: Keystage, bindings: list[dict[str, Any]], mode: str = "any") -> int:
    flow_id = await make_flow(ks, f"f{time.monotonic_ns()}", [("deny", {})], policy_engine_mode=mode)
    for order, binding in enumerate(bindings):
        columns = ["flow_id", '"order"', *binding]
        values = [flow_id, order, *binding.values()]
        marks = ", ".join(f"${i + 1}" for i in range(len(values)))
        await ks.pool.execute(f"INSERT INTO policy_bindings ({', '.join(columns)}) VALUES ({marks})", *values)
    return flow_id


async def verdict(ks: Keystage, flow_id: int, user: Any = None, context: dict[str, Any] | None = None) -> PolicyResult:
    bindings = await policy_engine.bindings_for(ks, flow_id=flow_id)
    mode = await ks.pool.fetchval("SELECT policy_engine_mode FROM flows WHERE id = $1", flow_id)
    return await policy_engine.evaluate(ks, bindings.get(("flow", flow_id), []), mode,
                                        PolicyRequest(ks, user, None, context or {}))


async def test_no_bindings_pass(kernel: Keystage) -> None:
    assert (await verdict(kernel, await flow_with(kernel, []))).passing


@pytest.mark.parametrize(("mode", "values", "expected"), [
    ("all", [True, True], True), ("all", [True, False], False),
    ("any", [False, True], True), ("any", [False, False], False),
])
async def test_all_and_any(kernel: Keystage, mode: str, values: list[bool], expected: bool) -> None:
    ids = [await policy(kernel, f"c{i}", "test_constant", {"value": v}) for i, v in enumerate(values)]
    flow_id = await flow_with(kernel, [{"policy_id": i} for i in ids], mode)
    assert (await verdict(kernel, flow_id)).passing is expected


async def test_negate_and_disabled(kernel: Keystage) -> None:
    no = await policy(kernel, "no", "test_constant", {"value": False})
    flow_id = await flow_with(kernel, [{"policy_id": no, "negate": True}], "all")
    assert (await verdict(kernel, flow_id)).passing
    flow_id = await flow_with(kernel, [{"policy_id": no, "enabled": False}], "all")
    assert (await verdict(kernel, flow_id)).passing  # nothing enabled: no restriction


@pytest.mark.parametrize("type_", ["test_raises", "test_wrong_type", "no_such_type"])
async def test_failures_fail_closed_and_are_recorded(kernel: Keystage, type_: str) -> None:
    pid = await policy(kernel, f"bad-{type_}", type_)
    flow_id = await flow_with(kernel, [{"policy_id": pid}], "all")
    assert not (await verdict(kernel, flow_id)).passing
    row = await kernel.pool.fetchrow("SELECT context FROM events WHERE action = 'policy_exception'")
    assert json.loads(row["context"])["policy"] == f"bad-{type_}"
    # failure_result decides: an admin may choose to let a broken policy pass.
    flow_id = await flow_with(kernel, [{"policy_id": pid, "failure_result": True}], "all")
    assert (await verdict(kernel, flow_id)).passing


async def test_bad_config_fails_closed(kernel: Keystage) -> None:
    pid = await policy(kernel, "badconf", "test_constant", {"value": "not-a-bool-at-all"})
    assert not (await verdict(kernel, await flow_with(kernel, [{"policy_id": pid}], "all"))).passing


async def test_timeout_stops_the_evaluation_at_the_deadline(kernel: Keystage) -> None:
    pid = await policy(kernel, "slow", "test_slow")
    flow_id = await flow_with(kernel, [{"policy_id": pid, "timeout": 1}], "all")
    result = await asyncio.wait_for(verdict(kernel, flow_id), timeout=10)  # the policy itself would take 30 s
    assert not result.passing
    row = await kernel.pool.fetchrow("SELECT context FROM events WHERE action = 'policy_exception'")
    assert "timed out" in json.loads(row["context"])["reason"]


async def test_results_are_cached_and_a_policy_change_invalidates(kernel: Keystage) -> None:
    pid = await policy(kernel, "cached", "test_constant", {"value": True})
    flow_id = await flow_with(kernel, [{"policy_id": pid}], "all")
    Constant.calls = 0
    for _ in range(3):
        assert (await verdict(kernel, flow_id)).passing
    assert Constant.calls == 1
    await kernel.pool.execute("UPDATE policies SET config = '{\"value\": false}' WHERE id = $1", pid)
    assert not (await verdict(kernel, flow_id)).passing
    assert Constant.calls == 2


async def test_group_membership_change_is_seen_by_the_very_next_evaluation(kernel: Keystage) -> None:
    staff = await kernel.users.create_group("staff")
    sub = await kernel.users.create_group("sub", parent_id=None)
    user = await kernel.users.create("gina")
    pid = await policy(kernel, "staff-only", "test_in_group", {"group": "staff"})
    flow_id = await flow_with(kernel, [{"policy_id": pid}], "all")

    async def check() -> bool:
        return (await verdict(kernel, flow_id, await kernel.users.get(user.id))).passing

    assert not await check()
    assert not await check()  # cached "no"
    await kernel.users.add_member(staff.id, user.id)
    assert await check()
    await kernel.users.remove_member(staff.id, user.id)
    assert not await check()
    # Through the group tree: gina is in "sub"; making "sub" a child of "staff" puts her in staff.
    await kernel.users.add_member(sub.id, user.id)
    assert not await check()
    await kernel.pool.execute("UPDATE groups SET parent_id = $1 WHERE id = $2", staff.id, sub.id)
    assert await check()
    await kernel.pool.execute("DELETE FROM groups WHERE id = $1", staff.id)
    assert not await check()


async def test_user_and_group_bindings(kernel: Keystage) -> None:
    group = await kernel.users.create_group("ops")
    hank = await kernel.users.create("hank")
    ivy = await kernel.users.create("ivy")
    await kernel.users.add_member(group.id, ivy.id)
    flow_id = await flow_with(kernel, [{"user_id": hank.id}, {"group_id": group.id}], "any")
    assert (await verdict(kernel, flow_id, await kernel.users.get(hank.id))).passing
    assert (await verdict(kernel, flow_id, await kernel.users.get(ivy.id))).passing
    assert not (await verdict(kernel, flow_id, None)).passing


def test_password_rules() -> None:
    from keystage.plugins.policies.password import PasswordPolicyConfig, problems

    config = PasswordPolicyConfig(min_length=10, min_uppercase=1, min_digits=1, min_symbols=1)
    assert problems("Tr0ub4dor&3xyz", config, ["alice"]) == []
    assert "The password is too short." in problems("Ab1!", config, [])
    assert "The password needs more uppercase letters." in problems("tr0ub4dor&3xyz", config, [])
    assert "The password needs more digits." in problems("Troubador&xyz", config, [])
    assert "The password needs more symbols." in problems("Tr0ub4dor3xyz", config, [])
    assert "The password may not contain your username." in problems("xxAlice1234!!X", config, ["alice"])
    common = PasswordPolicyConfig(min_length=1)
    assert "This password is too common. Please choose another one." in problems("iloveyou", common, [])


async def test_password_policy_through_an_enrollment_prompt(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    await policy(ks, "strong", "password", {"min_length": 12})
    await make_flow(ks, "enroll", [
        ("prompt", {"fields": [{"field_key": "username", "label": "Username", "required": True},
                               {"field_key": "password", "label": "Password", "type": "password", "required": True}],
                    "validation_policies": ["strong"]}),
        ("user_write", {"user_creation_mode": "always_create"}),
    ], designation="enrollment")
    driver = FlowDriver(keystage_app.test_client())
    await driver.start("enroll")
    answer = await driver.submit(username="jo", password="password")
    messages = [e["message"] for e in answer["response_errors"]["password"]]
    assert "The password is too short." in messages
    assert "This password is too common. Please choose another one." in messages
    assert await ks.users.find("jo") is None
    answer = await driver.submit(username="jo", password="a much longer passphrase")
    assert answer["component"] == "redirect" and await ks.users.find("jo") is not None


async def test_unknown_validation_policy_fails_closed(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    await make_flow(ks, "enroll2", [
        ("prompt", {"fields": [{"field_key": "username", "label": "Username", "required": True}],
                    "validation_policies": ["does-not-exist"]}),
    ], designation="enrollment")
    driver = FlowDriver(keystage_app.test_client())
    await driver.start("enroll2")
    answer = await driver.submit(username="kim")
    assert answer["component"] == "prompt" and answer["response_errors"]


async def test_password_expiry_sends_through_a_change_flow(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    user = await ks.users.create("lena", password="old password here")
    await ks.pool.execute("UPDATE users SET password_changed_at = now() - interval '100 days' WHERE id = $1", user.id)
    await make_flow(ks, "change-password", [
        ("prompt", {"fields": [{"field_key": "password", "label": "New password", "type": "password", "required": True},
                               {"field_key": "password_repeat", "label": "Repeat", "type": "password_repeat",
                                "required": True}]}),
        ("user_write", {"user_creation_mode": "never_create"}),
    ], designation="stage_configuration")
    flow_id = await make_flow(ks, "login", [("identification", {}), ("password", {}),
                                            ("user_login", {}, {"evaluate_on_plan": False,
                                                                "re_evaluate_policies": True})])
    pid = await policy(ks, "expiry", "password_expiry", {"max_age_days": 90, "change_flow": "change-password"})
    binding = await ks.pool.fetchval(
        "SELECT b.id FROM flow_stage_bindings b JOIN stages s ON s.id = b.stage_id "
        "WHERE b.flow_id = $1 AND s.type = 'user_login'", flow_id)
    await ks.pool.execute("INSERT INTO policy_bindings (stage_binding_id, policy_id) VALUES ($1, $2)", binding, pid)
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("login")
    await driver.submit("identification", uid_field="lena")
    answer = await driver.submit("password", password="old password here")
    assert answer["component"] == "prompt"
    answer = await driver.submit(password="brand new password", password_repeat="brand new password")
    assert answer == {"component": "redirect", "to": "/"}
    assert await ks.users.check_password(await ks.users.get(user.id), "brand new password")
    assert (await client.get("/")).status_code == 200  # logged in


async def test_reputation_drops_with_failures_and_denies(keystage_app: Any) -> None:
    # The policy reads the brute-force counters (engine/throttle.py): one set of counters.
    from keystage.plugins.policies.reputation import score

    ks = keystage_app.extensions["keystage"]
    await ks.users.create("max", password="right password")
    flow_id = await make_flow(ks, "login", [("identification", {}), ("password", {"failed_attempts_before_cancel": 100}),
                                            ("user_login", {})])
    pid = await policy(ks, "rep", "reputation", {"threshold": -3})
    await ks.pool.execute("INSERT INTO policy_bindings (flow_id, policy_id) VALUES ($1, $2)", flow_id, pid)
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("login")
    await driver.submit("identification", uid_field="max")
    assert (await driver.submit("password", password="right password"))["component"] == "redirect"
    ip = (await ks.pool.fetchval("SELECT host(client_ip) FROM events WHERE action = 'login'"))
    assert await score(ks, "ip", ip) == 0 and await score(ks, "username", "max") == 0
    driver = FlowDriver(keystage_app.test_client())
    await driver.start("login")
    await driver.submit("identification", uid_field="max")
    for _ in range(3):
        assert (await driver.submit("password", password="wrong"))["component"] == "password"
    assert await score(ks, "ip", ip) == -3 and await score(ks, "username", "MAX") == -3
    # At the threshold this address cannot even start the flow, right password or not.
    assert (await FlowDriver(keystage_app.test_client()).start("login"))["component"] == "access-denied"
    # The scores are persisted: they survive the key-value store losing everything.
    await ks.pool.execute("DELETE FROM kv")
    assert await score(ks, "ip", ip) == -3


async def test_event_matcher() -> None:
    from keystage.plugins.policies.event_matcher import EventMatcherConfig, EventMatcherPolicy

    request = PolicyRequest(None, None, None, {"event": {"action": "login_failed", "client_ip": "10.1.2.3"}})  # type: ignore[arg-type]
    matches = EventMatcherPolicy("m", EventMatcherConfig(action="login_failed", client_ip="10.0.0.0/8"))
    assert (await matches.passes(request)).passing
    other = EventMatcherPolicy("m", EventMatcherConfig(action="login"))
    assert not (await other.passes(request)).passing
    assert not (await EventMatcherPolicy("m", EventMatcherConfig()).passes(request)).passing


def test_app_builds_with_test_types(keystage_settings: Any) -> None:
    ks = Keystage(keystage_settings, extra_plugins=[("test-policy-types", TestTypes())])
    assert {"test_constant", "password", "reputation", "superuser_absent"} <= set(ks.policy_types)
    assert create_app(keystage_settings, keystage=ks)
