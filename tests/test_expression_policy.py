"""The expression policy type: what admins really write keeps working, in the sandbox and in flows.

Against a real PostgreSQL (the test kit's fixtures): users, nested groups, ``user_by``,
a flow whose binding runs an expression, save-time errors with line and column, and
``keystage policy test`` as an admin runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import pytest_asyncio

from keystage.engine import events
from keystage.engine.blueprints import BlueprintError, apply, load
from keystage.engine.config import Settings
from keystage.engine.errors import PluginError
from keystage.engine.hookspecs import hookimpl
from keystage.engine.policy import PolicyRequest, PolicyResult
from keystage.engine.request_info import RequestInfo
from keystage.engine.runtime import Keystage
from keystage.engine.sandbox import ExpressionError, Sandbox, collect_helpers, get_sandbox
from keystage.engine.sandbox.context import policy_context
from keystage.engine.testing import FlowDriver, make_flow, registered_plugin
from keystage.plugins.policies.expression import ExpressionPolicy

KEYSTAGE = Path(sys.executable).with_name("keystage")

CONTEXT: dict[str, Any] = {
    "user": {"username": "alice", "email": "alice@corp.example", "name": "Alice Liddell", "is_active": True,
             "is_superuser": False, "attributes": {"department": "engineering", "clearance": 3,
                                                   "countries": ["de", "fr"]},
             "groups": ["staff", "engineering"]},
    "ip": "10.20.30.40", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0",
    "headers": {"accept-language": "de-DE,de;q=0.9", "x-forwarded-proto": "https"},
    "flow": {"slug": "default-authentication-flow", "designation": "authentication"},
    "context": {"prompt_data": {"email": "new@corp.example", "username": "newbie"}, "pending_user": 7},
    "application": {"slug": "wiki", "name": "Wiki"},
}

# What admins write (the authentik expression-policy idioms, keystage's names).
BENIGN: list[tuple[str, str, Any]] = [
    ("group", "return is_group_member(request.user, 'Staff')", True),
    ("group-missing", "return is_group_member(request.user, 'admins')", False),
    ("groups-list", "return 'engineering' in request.user.groups and len(request.user.groups) == 2", True),
    ("ip-range", "return request.ip in ip_network('10.0.0.0/8')", True),
    ("ip-ranges-any", "allowed = ['192.168.0.0/16', '10.20.0.0/16']\n"
                      "return any(request.ip in ip_network(net) for net in allowed)", True),
    ("ip-private", "return request.ip.is_private and not request.ip.is_loopback", True),
    ("ip-address", "return request.ip == ip_address('10.20.30.40')", True),
    ("email-regex", "return regex_match(request.user.email, r'@corp\\.example$')", True),
    ("email-endswith", "return request.user.email.lower().endswith('@other.example')", False),
    ("attribute", "return request.user.attributes.get('department') == 'engineering'", True),
    ("attribute-number", "return request.user.attributes.get('clearance', 0) >= 3", True),
    ("attribute-list", "return 'fr' in request.user.attributes.get('countries', [])", True),
    ("list-equality", "return request.user.attributes['countries'] == ['de', 'fr'] and "
                      "request.user.groups + ['x'] == ['engineering', 'staff', 'x']", True),
    ("superuser-or-staff", "if request.user.is_superuser:\n    return True\n"
                           "return is_group_member(request.user, 'staff') and request.user.is_active", True),
    ("user-agent", "return regex_match(request.user_agent, 'Firefox/(1[0-9]{2})')", True),
    ("header", "return request.headers.get('accept-language', '').startswith('de')", True),
    ("flow", "return request.flow.designation == 'authentication' and request.flow.slug.startswith('default')", True),
    ("prompt-data", "data = request.context.get('prompt_data', {})\n"
                    "return data.get('email', '').endswith('@corp.example')", True),
    ("application", "return request.application is not None and request.application.slug == 'wiki'", True),
    ("time", "t = now()\nreturn t.year >= 2024 and (t - timedelta(days=1)) < t", True),
    ("loop-and-function", "def initials(name):\n    return ''.join(p[0] for p in name.split())\n"
                          "total = 0\nfor i in range(10):\n    total += i\n"
                          "return initials(request.user.name) == 'AL' and total == 45", True),
    ("fstring", "label = f\"{request.user.username:>8}|{3.14159:.2f}|{request.ip!s}\"\n"
                "return label == '   alice|3.14|10.20.30.40'", True),
    ("percent-format", "return '%s:%05d' % (request.user.username, 42) == 'alice:00042'", True),
    ("comprehension-dict", "d = {g: len(g) for g in request.user.groups}\nd['x'] = 1\nreturn d['staff'] == 5", True),
    ("sorting", "return sorted(request.user.groups, key=lambda g: -len(g))[0] == 'engineering'", True),
    ("try-except", "try:\n    return 1 / 0 > 0\nexcept ZeroDivisionError:\n    return False", False),
    ("walrus", "if (n := len(request.user.groups)) > 1:\n    return n == 2\nreturn False", True),
    ("anonymous-safe", "return request.user is not None and not is_group_member(None, 'staff')", True),
]


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox(workers=2)
    yield sandbox
    await sandbox.close()


@pytest.mark.parametrize(("source", "expected"), [b[1:] for b in BENIGN], ids=[b[0] for b in BENIGN])
async def test_benign_policy(pool: Sandbox, source: str, expected: Any) -> None:
    result = await pool.evaluate(source, context=CONTEXT)
    assert result.value is expected


async def test_message_and_log(pool: Sandbox) -> None:
    source = ("log('checking', request.user.username)\nprint('groups:', len(request.user.groups))\n"
              "if not is_group_member(request.user, 'admins'):\n"
              "    message('Only admins may use this application.')\n    return False\nreturn True")
    result = await pool.evaluate(source, context=CONTEXT)
    assert result.value is False
    assert result.messages == ("Only admins may use this application.",)
    assert result.log_lines == ("checking alice", "groups: 2")
    assert 0 < result.duration < 0.5


async def test_mapping(pool: Sandbox) -> None:
    source = "return {'name': request.user.name, 'groups': request.user.groups, 'dept': request.user.attributes}"
    result = await pool.evaluate(source, context=CONTEXT, kind="mapping")
    assert result.value == {"name": "Alice Liddell", "groups": ["engineering", "staff"],
                            "dept": CONTEXT["user"]["attributes"]}
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("return {'when': now()}", context=CONTEXT, kind="mapping")
    assert info.value.kind == "result_type" and "datetime" in info.value.message


async def test_errors_carry_the_admins_line(pool: Sandbox) -> None:
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("x = 1\ny = request.user.attributes['missing']\nreturn True", context=CONTEXT)
    assert (info.value.kind, info.value.line) == ("runtime", 2)
    assert "KeyError" in info.value.message and "line 2" in str(info.value)
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("def f(x):\n    return x / 0\nlog('before')\nreturn f(1) > 0", context=CONTEXT)
    assert (info.value.kind, info.value.line, info.value.log_lines) == ("runtime", 2, ("before",))
    with pytest.raises(ExpressionError) as info:
        await pool.evaluate("if request.user:\n    return 'yes'\n", context=CONTEXT)
    assert info.value.kind == "result_type"
    assert "str 'yes'" in info.value.message and "True or False" in info.value.message


def test_save_time_errors_have_line_and_column() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        ExpressionPolicy.validate_config({"expression": "ok = True\nif ok:\n    x = request.user.__class__\nreturn ok"})
    assert "line 3, column 9" in str(info.value) and "__class__" in str(info.value)
    with pytest.raises(pydantic.ValidationError) as info:
        ExpressionPolicy.validate_config({"expression": "return (1 +\n"})
    assert "line 1" in str(info.value)
    with pytest.raises(pydantic.ValidationError):
        ExpressionPolicy.validate_config({"expression": "return True", "timeout": 60})
    assert ExpressionPolicy.validate_config({"expression": "return True"}).timeout == 1.0


# -- with the database ----------------------------------------------------------------------


@pytest_asyncio.fixture
async def ks(keystage: Keystage) -> AsyncIterator[Keystage]:
    try:
        yield keystage
    finally:
        pool = keystage.state.get("sandbox")
        if pool is not None:
            await pool.close()


def request_for(ks: Keystage, user: Any, **headers: str) -> PolicyRequest:
    info = RequestInfo(client_ip="10.1.2.3", user_agent="pytest", locale="en", path="/",
                       headers={"authorization": "Basic c2VjcmV0", "x-team": "blue", **headers})
    return PolicyRequest(keystage=ks, user=user, request=info, context={"pending_user": user.id if user else None})


def policy(source: str, **config: Any) -> ExpressionPolicy:
    return ExpressionPolicy("test", ExpressionPolicy.validate_config({"expression": source, **config}))


async def test_nested_groups_and_membership_changes(ks: Keystage) -> None:
    alice = await ks.users.create("alice", email="alice@example.com")
    parent = await ks.users.create_group("Engineering")
    child = await ks.users.create_group("backend", parent_id=parent.id)
    check = policy("return is_group_member(request.user, 'engineering')")
    assert (await check.passes(request_for(ks, await ks.users.get(alice.id)))).passing is False
    await ks.users.add_member(child.id, alice.id)
    # Each request reads the user afresh: the very next one sees the membership (a child group's).
    assert (await check.passes(request_for(ks, await ks.users.get(alice.id)))).passing is True
    listed = policy("return sorted(request.user.groups) == ['Engineering', 'backend']")
    assert (await listed.passes(request_for(ks, await ks.users.get(alice.id)))).passing is True
    await ks.pool.execute("UPDATE groups SET name = 'Platform' WHERE id = $1", parent.id)
    assert (await check.passes(request_for(ks, await ks.users.get(alice.id)))).passing is False
    await ks.users.remove_member(child.id, alice.id)
    assert (await policy("return request.user.groups == ()").passes(
        request_for(ks, await ks.users.get(alice.id)))).passing is True


async def test_deny_messages_reach_the_policy_result(ks: Keystage) -> None:
    bob = await ks.users.create("bob")
    result = await policy("message('Ask IT for access.')\nreturn False").passes(request_for(ks, bob))
    assert (result.passing, result.messages) == (False, ("Ask IT for access.",))


async def test_secret_headers_and_fields_stay_on_the_host(ks: Keystage) -> None:
    carol = await ks.users.create("carol", password="correct horse battery")
    request = request_for(ks, carol)
    source = "return request.headers.get('x-team') == 'blue' and 'authorization' not in request.headers"
    assert (await policy(source).passes(request)).passing is True
    compiled = policy("return request.headers.get('x') is None").compiled
    data = await policy_context(request, compiled)
    assert "password_hash" not in json.dumps(data) and "argon2" not in json.dumps(data)
    assert "context" not in data  # not read by the expression: not sent


async def test_user_by_constant_and_computed(ks: Keystage) -> None:
    alice = await ks.users.create("alice", email="alice@example.com")
    boss = await ks.users.create("Boss", email="boss@example.com", attributes={"team": "core"})
    team = await ks.users.create_group("approvers")
    await ks.users.add_member(team.id, boss.id)
    constant = policy("b = user_by(username='boss')\n"
                      "return b is not None and b.attributes.get('team') == 'core' and is_group_member(b, 'approvers')")
    assert (await constant.passes(request_for(ks, alice))).passing is True
    computed = policy("name = request.user.email.split('@')[0].replace('alice', 'boss')\n"
                      "other = user_by(email=name + '@example.com')\n"
                      "nobody = user_by(username='nobody-' + name)\n"
                      "return other.username == 'Boss' and nobody is None")
    assert (await computed.passes(request_for(ks, alice))).passing is True
    with pytest.raises(ExpressionError):
        await policy("return user_by(username='a', email='b') is None").passes(request_for(ks, alice))


async def test_many_policies_for_one_request(ks: Keystage) -> None:
    gina = await ks.users.create("gina", attributes={"level": 4})
    team = await ks.users.create_group("team-3")
    await ks.users.add_member(team.id, gina.id)
    policies = [policy(f"return is_group_member(request.user, 'team-{i}') or request.user.attributes['level'] > {i}")
                for i in range(8)] + [policy("return 1 / 0 > 0"), policy("message('no')\nreturn request.ip is None")]
    results = await ExpressionPolicy.passes_many(policies, request_for(ks, gina))
    assert [r.passing for r in results[:8]] == [True, True, True, True, False, False, False, False]
    assert isinstance(results[8], ExpressionError) and results[8].kind == "runtime"
    assert results[9] == PolicyResult(False, ("no",))
    assert await ExpressionPolicy.passes_many([], request_for(ks, gina)) == []


async def test_cacheable_only_when_pure(ks: Keystage) -> None:
    assert policy("return is_group_member(request.user, 'x')").cacheable is True
    assert policy("return now().hour > 1").cacheable is False
    assert policy("return user_by(username='x') is None").cacheable is False
    assert policy("r = request\nreturn r.ip is None").cacheable is False
    request = request_for(ks, await ks.users.create("dave"))
    assert policy("return request.ip is None").cache_key(request) == ("10.1.2.3",)


class HelperPlugin:
    def __init__(self, helpers: dict[str, Any]) -> None:
        self.helpers = helpers

    @hookimpl
    def register_expression_helpers(self) -> dict[str, Any]:
        return self.helpers


async def test_plugin_helpers_reach_the_workers(ks: Keystage) -> None:
    helpers = {"shorten": textwrap.shorten, "b64": "base64:b64encode", "allowed_domains": ["corp.example"],
               "counter": "itertools:count"}
    with registered_plugin(ks, HelperPlugin(helpers), "helpers-plugin"):
        pool = get_sandbox(ks)
        assert {"shorten", "b64", "allowed_domains", "counter"} <= pool.helper_names
        frank = await ks.users.create("frank", email="frank@corp.example", display_name="Franklin Delano")
        source = ("domain = request.user.email.split('@')[1]\n"
                  "return domain in allowed_domains and shorten(request.user.name, width=10, placeholder='~') "
                  "== 'Franklin~' and b64(b'x') == b'eA=='")
        assert (await policy(source).passes(request_for(ks, frank))).passing is True
        with pytest.raises(ExpressionError) as info:
            await policy("return counter() is not None").passes(request_for(ks, frank))
        assert info.value.kind == "runtime" and "count" in info.value.message  # no live host object handed out


async def test_unportable_or_clashing_helpers_stop_with_the_plugins_name(ks: Keystage) -> None:
    with registered_plugin(ks, HelperPlugin({"double": lambda x: 2 * x}), "lambda-plugin"):
        with pytest.raises(PluginError) as info:
            collect_helpers(ks.plugins)
        assert "lambda-plugin" in str(info.value) and "double" in str(info.value)
    with registered_plugin(ks, HelperPlugin({"now": "time:time"}), "shadow-plugin"):
        with pytest.raises(PluginError, match="already a name"):
            collect_helpers(ks.plugins)
    with registered_plugin(ks, HelperPlugin({"tag": "x"}), "first"), \
            registered_plugin(ks, HelperPlugin({"tag": "y"}), "second"):
        with pytest.raises(PluginError) as info:
            collect_helpers(ks.plugins)
        assert "first" in str(info.value) and "second" in str(info.value)


async def test_per_call_helpers(pool: Sandbox) -> None:
    result = await pool.evaluate("return wrap('a b c d', 3) == ['a b', 'c d']", context=CONTEXT,
                                 helpers={"wrap": textwrap.wrap})
    assert result.value is True


# -- in a real flow ---------------------------------------------------------------------------


async def bind(ks: Keystage, flow_id: int, name: str, source: str, **config: Any) -> None:
    policy_id = await ks.pool.fetchval(
        "INSERT INTO policies (name, type, config) VALUES ($1, 'expression', $2::jsonb) RETURNING id",
        name, json.dumps({"expression": source, **config}))
    await ks.pool.execute("INSERT INTO policy_bindings (flow_id, policy_id) VALUES ($1, $2)", flow_id, policy_id)


@pytest_asyncio.fixture
async def app(keystage_app: Any) -> AsyncIterator[Any]:
    try:
        yield keystage_app
    finally:
        pool = keystage_app.extensions["keystage"].state.get("sandbox")
        if pool is not None:
            await pool.close()


async def test_flow_allows_and_denies_through_an_expression(app: Any) -> None:
    ks = app.extensions["keystage"]
    open_id = await make_flow(ks, "open-door", [("identification", {})])
    await bind(ks, open_id, "from-here", "log(request.ip)\nreturn request.ip is not None and not request.ip.is_global")
    closed_id = await make_flow(ks, "closed-door", [("identification", {})])
    await bind(ks, closed_id, "office-only",
               "if request.ip in ip_network('192.0.2.0/24'):\n    return True\n"
               "message('Only from the office network.')\nreturn False")
    client = app.test_client()
    assert (await FlowDriver(client).start("open-door"))["component"] == "identification"
    denied = await FlowDriver(client).start("closed-door")
    assert denied["component"] == "access-denied"
    assert denied["message"] == "Only from the office network."


async def test_flow_fails_closed_with_the_line_in_the_event(app: Any) -> None:
    ks = app.extensions["keystage"]
    flow_id = await make_flow(ks, "broken", [("identification", {})])
    await bind(ks, flow_id, "broken-policy", "x = 1\nreturn request.user.attributes['nope'] == x")
    assert (await FlowDriver(app.test_client()).start("broken"))["component"] == "access-denied"
    recorded = await events.recent(ks, action="policy_exception")
    assert recorded and recorded[0].context["policy"] == "broken-policy"
    assert recorded[0].context.get("line") == 2 or "line 2" in recorded[0].context["reason"]


async def test_a_runaway_policy_costs_one_request(app: Any) -> None:
    ks = app.extensions["keystage"]
    spin_id = await make_flow(ks, "spin", [("identification", {})])
    await bind(ks, spin_id, "spinner", "while True:\n    pass", timeout=0.3)
    fine_id = await make_flow(ks, "fine", [("identification", {})])
    await bind(ks, fine_id, "fine-policy", "return True")
    client = app.test_client()
    started = time.perf_counter()
    assert (await FlowDriver(client).start("spin"))["component"] == "access-denied"
    assert time.perf_counter() - started < 2
    started = time.perf_counter()
    assert (await FlowDriver(client).start("fine"))["component"] == "identification"
    assert time.perf_counter() - started < 1
    assert get_sandbox(ks).stats["killed"] >= 1


async def test_blueprint_refuses_a_broken_expression_with_line_and_column(ks: Keystage) -> None:
    text = ("version: 1\nmetadata: {name: bad}\nentries:\n  - model: policy\n    identifiers: {name: bad}\n"
            "    attrs:\n      type: expression\n      config:\n"
            "        expression: \"x = 1\\nimport os\\nreturn True\"\n")
    with pytest.raises(BlueprintError) as info:
        await apply(ks, [load(text)])
    assert "line 2, column 1" in str(info.value) and "import" in str(info.value)


# -- keystage policy test ---------------------------------------------------------------------


def cli(settings: Settings, tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTAGE_", "_KEYSTAGE_"))}
    env.update({"KEYSTAGE_DATABASE_URL": settings.database_url or "", "KEYSTAGE_DATA_DIR": str(tmp_path / "cli"),
                "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "false"})
    return subprocess.run([str(KEYSTAGE), "policy", "test", *args], env=env, cwd=tmp_path, input=stdin,
                          capture_output=True, text=True, timeout=60)


async def test_policy_test_command(ks: Keystage, keystage_settings: Settings, tmp_path: Path) -> None:
    erin = await ks.users.create("erin", email="erin@example.com")
    group = await ks.users.create_group("staff")
    await ks.users.add_member(group.id, erin.id)
    await ks.pool.execute(
        "INSERT INTO policies (name, type, config) VALUES ('staff-from-lan', 'expression', $1::jsonb)",
        json.dumps({"expression": "log('ip', request.ip)\nif not is_group_member(request.user, 'staff'):\n"
                                  "    message('staff only')\n    return False\n"
                                  "return request.ip in ip_network('10.0.0.0/8')"}))
    passed = cli(keystage_settings, tmp_path, "staff-from-lan", "--user", "erin", "--ip", "10.9.9.9")
    assert passed.returncode == 0, passed.stderr
    assert "result    pass" in passed.stdout and "log       ip 10.9.9.9" in passed.stdout
    assert "duration" in passed.stdout
    denied = cli(keystage_settings, tmp_path, "staff-from-lan", "--user", "erin", "--ip", "192.0.2.1", "--json")
    assert denied.returncode == 1, denied.stderr
    assert json.loads(denied.stdout)["result"] == "deny"
    broken = cli(keystage_settings, tmp_path, "draft", "--user", "erin", "--context", '{"a": 1}', "--expression", "-",
                 stdin="x = request.context['a']\nreturn x / 0 > 1\n")
    assert broken.returncode == 3, broken.stderr
    assert "line 2" in broken.stdout and "ZeroDivisionError" in broken.stdout
    refused = cli(keystage_settings, tmp_path, "draft", "--user", "erin", "--expression", "-",
                  stdin="return True\nimport os\n")
    assert refused.returncode == 3 and "line 2, column 1" in refused.stdout
    missing = cli(keystage_settings, tmp_path, "nope", "--user", "erin")
    assert missing.returncode == 2 and "no policy named" in missing.stderr
