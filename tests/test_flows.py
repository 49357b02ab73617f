"""The login flow end to end, in process, against a real PostgreSQL: both faces, and the attacks."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from keystage.engine.app import create_app
from keystage.engine.hookspecs import hookimpl
from keystage.engine.runtime import Keystage
from keystage.engine.sessions import COOKIE_NAME, store_key
from keystage.engine.testing import FlowDriver, make_flow
from keystage.plugins.hashers.argon2id import Argon2idHasher

LOGIN = [("identification", {}), ("password", {"failed_attempts_before_cancel": 3}), ("user_login", {})]


@pytest.fixture
async def app(keystage_app: Any) -> Any:
    ks = keystage_app.extensions["keystage"]
    await ks.users.create("alice", email="alice@example.com", password="correct horse battery")
    await make_flow(ks, "login", LOGIN, title="Welcome")
    await make_flow(ks, "logout", [("user_logout", {})], designation="invalidation")
    return keystage_app


def cookie(client: Any) -> str | None:
    for item in client.cookie_jar:
        if item.name == COOKIE_NAME:
            return item.value
    return None


async def json_login(client: Any, username: str, password: str, **query: str) -> tuple[FlowDriver, list[dict]]:
    driver = FlowDriver(client)
    seen = [await driver.start("login", **query)]
    seen.append(await driver.submit("identification", uid_field=username))
    seen.append(await driver.submit("password", password=password))
    return driver, seen


async def test_json_login_binds_a_new_session(app: Any) -> None:
    client = app.test_client()
    driver, seen = await json_login(client, "alice", "correct horse battery")
    assert [c["component"] for c in seen] == ["identification", "password", "redirect"]
    assert seen[0]["flow"]["title"] == "Welcome"
    assert seen[-1]["to"] == "/"
    page = await (await client.get("/")).get_data(as_text=True)
    assert "alice" in page and "Hello" in page


async def test_session_id_changes_at_login(app: Any) -> None:
    client = app.test_client()
    driver = FlowDriver(client)
    await driver.start("login")
    await driver.submit("identification", uid_field="alice")
    before = cookie(client)
    assert before, "a flow in progress has a session"
    await driver.submit("password", password="correct horse battery")
    after = cookie(client)
    assert after and after != before
    # The pre-login id is dead: someone who planted or stole it gets nothing.
    ks = app.extensions["keystage"]
    assert await ks.kv.get(store_key(before)) is None
    stolen = app.test_client()
    stolen.cookie_jar.set_cookie(type(next(iter(client.cookie_jar)))(
        0, COOKIE_NAME, before, None, False, "localhost.local", False, False, "/", True, False, None, False,
        None, None, {}))
    response = await stolen.get("/")
    assert response.status_code == 302 and "/flows/login/" in response.headers["Location"]


async def test_email_identifies_too(app: Any) -> None:
    client = app.test_client()
    _, seen = await json_login(client, "ALICE@example.com", "correct horse battery")
    assert seen[-1]["component"] == "redirect"


async def test_wrong_password_gives_a_field_error_and_no_session_user(app: Any) -> None:
    client = app.test_client()
    driver, seen = await json_login(client, "alice", "wrong")
    assert seen[-1]["component"] == "password"
    assert seen[-1]["response_errors"]["password"][0]["code"] == "invalid"
    response = await client.get("/")
    assert response.status_code == 302
    ks = app.extensions["keystage"]
    failed = await ks.pool.fetchval("SELECT count(*) FROM events WHERE action = 'login_failed' AND username = 'alice'")
    assert failed == 1


class CountingHasher(Argon2idHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=2, memory_cost=19456, parallelism=1)
        self.verifications = 0

    def verify(self, encoded: str, password: str) -> bool:
        self.verifications += 1
        return super().verify(encoded, password)


async def test_unknown_user_is_indistinguishable_from_wrong_password(keystage_settings: Any) -> None:
    hasher = CountingHasher()

    class Plugin:
        @hookimpl
        def register_password_hashers(self, settings: Any) -> list[Any]:
            return [hasher]

    kernel = Keystage(keystage_settings, extra_plugins=[("counting-hasher", Plugin())])
    app = create_app(keystage_settings, keystage=kernel)
    async with app.test_app():
        await kernel.users.create("alice", password="correct horse battery")
        await make_flow(kernel, "login", LOGIN)
        answers = {}
        for username in ("alice", "nobody-here"):
            client = app.test_client()
            before = hasher.verifications
            _, seen = await json_login(client, username, "wrong password")
            answers[username] = seen
            # The same work: one Argon2id verification, against a dummy hash for the unknown user.
            assert hasher.verifications - before == 1
        known, unknown = answers["alice"], answers["nobody-here"]
        strip = lambda c: {k: v for k, v in c.items() if k != "pending_identifier"}  # noqa: E731
        assert [strip(c) for c in known] == [strip(c) for c in unknown]


async def test_inactive_user_is_refused_like_a_wrong_password(app: Any) -> None:
    ks = app.extensions["keystage"]
    await ks.pool.execute("UPDATE users SET is_active = false WHERE username = 'alice'")
    _, seen = await json_login(app.test_client(), "alice", "correct horse battery")
    assert seen[-1]["component"] == "password"
    assert seen[-1]["response_errors"]["password"][0]["code"] == "invalid"


async def test_too_many_failures_restart_the_flow(app: Any) -> None:
    driver = FlowDriver(app.test_client())
    await driver.start("login")
    await driver.submit("identification", uid_field="alice")
    for _ in range(2):
        assert (await driver.submit("password", password="nope"))["component"] == "password"
    answer = await driver.submit("password", password="nope")
    assert answer["component"] == "identification"
    assert answer["messages"] == ["Too many failed attempts. Please start again."]


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


async def test_html_login_with_a_cookie_jar(app: Any) -> None:
    client = app.test_client()
    page = await client.get("/flows/login/?next=/after")
    html = await page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'autocomplete="username"' in html and '<label for="id_uid_field">' in html
    fields = form_fields(html)
    response = await client.post("/flows/login/?next=/after", form={**fields, "uid_field": "alice"})
    assert response.status_code == 303  # POST-redirect-GET
    page = await client.get(response.headers["Location"])
    html = await page.get_data(as_text=True)
    assert 'autocomplete="current-password"' in html
    response = await client.post("/flows/login/?next=/after",
                                 form={**form_fields(html), "password": "correct horse battery"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/after"


async def test_html_field_error_is_tied_to_its_field(app: Any) -> None:
    client = app.test_client()
    html = await (await client.get("/flows/login/")).get_data(as_text=True)
    await client.post("/flows/login/", form={**form_fields(html), "uid_field": "alice"})
    html = await (await client.get("/flows/login/")).get_data(as_text=True)
    response = await client.post("/flows/login/", form={**form_fields(html), "password": "bad"})
    html = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'aria-describedby="err_password"' in html and 'id="err_password"' in html
    assert 'aria-invalid="true"' in html and "autofocus" in html


@pytest.mark.parametrize("token", [None, "", "forged-token-value"])
async def test_missing_or_wrong_csrf_token_is_refused(app: Any, token: str | None) -> None:
    client = app.test_client()
    html = await (await client.get("/flows/login/")).get_data(as_text=True)
    fields = form_fields(html)
    fields.pop("csrf_token")
    if token is not None:
        fields["csrf_token"] = token
    response = await client.post("/flows/login/", form={**fields, "uid_field": "alice"})
    assert response.status_code == 403
    # Nothing moved: the flow still asks who you are.
    html = await (await client.get("/flows/login/")).get_data(as_text=True)
    assert 'name="uid_field"' in html


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/", "/\\evil.example", "http:/evil", "javascript:alert(1)",
    "/%0d%0aSet-Cookie:x=1", " /x", "\t//evil.example",
])
async def test_next_is_only_honoured_for_same_origin_paths(app: Any, target: str) -> None:
    _, seen = await json_login(app.test_client(), "alice", "correct horse battery", next=target)
    to = seen[-1]["to"]
    assert to == "/" or (to.startswith("/") and not to.startswith("//") and "\\" not in to)
    assert "evil" not in to or to.startswith("/%")


async def test_next_same_origin_path_is_kept(app: Any) -> None:
    _, seen = await json_login(app.test_client(), "alice", "correct horse battery", next="/apps?x=1")
    assert seen[-1]["to"] == "/apps?x=1"


async def test_logout_deletes_the_session(app: Any) -> None:
    client = app.test_client()
    await json_login(client, "alice", "correct horse battery")
    session_id = cookie(client)
    ks = app.extensions["keystage"]
    assert await ks.kv.get(store_key(session_id)) is not None
    response = await client.get("/flows/logout/")
    assert response.status_code == 302
    assert await ks.kv.get(store_key(session_id)) is None
    assert (await client.get("/")).status_code == 302
    assert await ks.pool.fetchval("SELECT count(*) FROM events WHERE action = 'logout'") == 1


async def test_unknown_flow_is_a_404_in_both_faces(app: Any) -> None:
    client = app.test_client()
    response = await client.get("/api/v1/flows/nope/executor")
    assert response.status_code == 404
    assert (await response.get_json())["component"] == "not-found"
    response = await client.get("/flows/nope/", headers={"Accept": "text/html"})
    assert response.status_code == 404 and "<html" in await response.get_data(as_text=True)


async def test_json_face_rejects_bad_bodies(app: Any) -> None:
    client = app.test_client()
    await client.get("/api/v1/flows/login/executor")
    response = await client.post("/api/v1/flows/login/executor", form={"component": "identification"})
    assert response.status_code == 415
    response = await client.post("/api/v1/flows/login/executor", data="[1,2]",
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    response = await client.post("/api/v1/flows/login/executor", data="{not json",
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    answer = await (await client.post("/api/v1/flows/login/executor",
                                      json={"component": "password", "password": "x"})).get_json()
    assert answer["component"] == "identification"
    assert answer["response_errors"]["non_field_errors"][0]["code"] == "wrong_component"
    answer = await (await client.post("/api/v1/flows/login/executor",
                                      json={"component": "identification", "uid_field": ["alice"]})).get_json()
    assert answer["response_errors"]["uid_field"][0]["code"] == "required"


async def test_corrupt_or_old_plan_restarts_cleanly(app: Any) -> None:
    client = app.test_client()
    driver = FlowDriver(client)
    await driver.start("login")
    await driver.submit("identification", uid_field="alice")
    ks = app.extensions["keystage"]
    key = store_key(cookie(client))
    for damage in ({"version": 0}, {"stages": "garbage"}, {"index": 99}):
        stored = json.loads(await ks.kv.get(key))
        stored["d"]["flow_plans"]["login"].update(damage)
        await ks.kv.set(key, json.dumps(stored).encode(), ttl=600)
        answer = await driver.submit("password", password="correct horse battery")
        assert driver.status == 200
        assert answer["component"] == "identification"
        assert answer.get("messages")
        await driver.submit("identification", uid_field="alice")


async def test_invalid_response_action_restart(app: Any) -> None:
    ks = app.extensions["keystage"]
    await make_flow(ks, "strict", [("identification", {}),
                                   ("password", {}, {"invalid_response_action": "restart"}), ("user_login", {})])
    driver = FlowDriver(app.test_client())
    await driver.start("strict")
    await driver.submit("identification", uid_field="alice")
    answer = await driver.submit("password", password="wrong")
    assert answer["component"] == "identification"
    assert answer["response_errors"]["password"][0]["code"] == "invalid"


async def test_group_binding_on_a_flow_denies_others(app: Any) -> None:
    ks = app.extensions["keystage"]
    flow_id = await make_flow(ks, "admins-only", [("deny", {"message": "never shown"})])
    group = await ks.users.create_group("admins")
    await ks.pool.execute("INSERT INTO policy_bindings (flow_id, group_id) VALUES ($1, $2)", flow_id, group.id)
    client = app.test_client()
    answer = await FlowDriver(client).start("admins-only")
    assert answer["component"] == "access-denied"
    await json_login(client, "alice", "correct horse battery")
    assert (await FlowDriver(client).start("admins-only"))["component"] == "access-denied"
    alice = await ks.users.find("alice")
    await ks.users.add_member(group.id, alice.id)
    answer = await FlowDriver(client).start("admins-only")
    assert answer == {**answer, "component": "access-denied", "message": "never shown"}


async def test_stage_binding_for_a_user_is_skipped_for_others(app: Any) -> None:
    ks = app.extensions["keystage"]
    alice = await ks.users.find("alice")
    bob = await ks.users.create("bob", password="bob password here")
    flow_id = await make_flow(ks, "who", [("identification", {}), ("deny", {"message": "bob only"}),
                                          ("password", {}), ("user_login", {})])
    binding = await ks.pool.fetchval(
        'SELECT b.id FROM flow_stage_bindings b JOIN stages s ON s.id = b.stage_id '
        "WHERE b.flow_id = $1 AND s.type = 'deny'", flow_id)
    await ks.pool.execute("UPDATE flow_stage_bindings SET evaluate_on_plan = false, re_evaluate_policies = true "
                          "WHERE id = $1", binding)
    await ks.pool.execute("INSERT INTO policy_bindings (stage_binding_id, user_id) VALUES ($1, $2)", binding, bob.id)
    driver = FlowDriver(app.test_client())
    await driver.start("who")
    assert (await driver.submit("identification", uid_field="alice"))["component"] == "password"
    driver = FlowDriver(app.test_client())
    await driver.start("who")
    assert (await driver.submit("identification", uid_field="bob"))["component"] == "access-denied"
    assert alice is not None


async def test_initial_setup_creates_one_superuser_then_refuses(keystage_app: Any) -> None:
    from keystage.engine.blueprints import apply_defaults

    ks = keystage_app.extensions["keystage"]
    await apply_defaults(ks)
    client = keystage_app.test_client()
    assert (await client.get("/")).headers["Location"].startswith("/flows/default-authentication-flow/")
    driver = FlowDriver(client)
    assert (await driver.start("initial-setup"))["component"] == "prompt"
    answer = await driver.submit(username="root", email="root@example.com", password="a long root password",
                                 password_repeat="a long root password")
    assert answer == {"component": "redirect", "to": "/"}
    assert await ks.pool.fetchval("SELECT count(*) FROM users WHERE is_superuser") == 1
    other = FlowDriver(keystage_app.test_client())
    assert (await other.start("initial-setup"))["component"] == "access-denied"


async def test_initial_setup_race_makes_one_superuser(keystage_app: Any) -> None:
    from keystage.engine.blueprints import apply_defaults

    ks = keystage_app.extensions["keystage"]
    await apply_defaults(ks)
    drivers = [FlowDriver(keystage_app.test_client()) for _ in range(3)]
    for index, driver in enumerate(drivers):
        await driver.start("initial-setup")  # every plan passes: nobody is superuser yet
    answers = await asyncio.gather(*[
        d.submit(username=f"root{i}", email=f"r{i}@example.com", password="a long root password",
                 password_repeat="a long root password") for i, d in enumerate(drivers)])
    assert sorted(a["component"] for a in answers) == ["access-denied", "access-denied", "redirect"]
    assert await ks.pool.fetchval("SELECT count(*) FROM users WHERE is_superuser") == 1


async def open_enrollment(ks: Any) -> None:
    """What an admin does to offer sign-up: remove the shipped closing binding."""
    from keystage.engine.blueprints import apply_defaults

    await apply_defaults(ks)
    await ks.pool.execute("DELETE FROM policy_bindings WHERE policy_id = "
                          "(SELECT id FROM policies WHERE name = 'default-enrollment-closed')")


async def test_enrollment_is_closed_on_a_fresh_install(keystage_app: Any) -> None:
    from keystage.engine.blueprints import apply_defaults

    ks = keystage_app.extensions["keystage"]
    await apply_defaults(ks)
    driver = FlowDriver(keystage_app.test_client())
    answer = await driver.start("default-enrollment-flow")
    assert answer["component"] == "access-denied" and answer["message"] == "Sign-up is not open."
    answer = await driver.submit("prompt", username="mallory", email="m@example.org", password="pw-123456",
                                 password_repeat="pw-123456")
    assert answer["component"] == "access-denied"
    assert await ks.users.find("mallory") is None


async def test_enrollment_duplicate_username_goes_back_to_the_prompt(keystage_app: Any) -> None:
    ks = keystage_app.extensions["keystage"]
    await open_enrollment(ks)
    await ks.users.create("taken", password="whatever long")
    driver = FlowDriver(keystage_app.test_client())
    await driver.start("default-enrollment-flow")
    answer = await driver.submit(username="taken", email="new@example.com", password="pw long enough",
                                 password_repeat="pw long enough")
    assert answer["component"] == "prompt"
    assert answer["response_errors"]["username"][0]["message"] == "This username is already taken."
    answer = await driver.submit(username="fresh", email="new@example.com", password="pw long enough",
                                 password_repeat="pw long enough")
    assert answer == {"component": "redirect", "to": "/"}
    fresh = await ks.users.find("fresh")
    assert fresh is not None and not fresh.is_superuser
    assert await ks.users.check_password(fresh, "pw long enough")


async def test_prompt_validation_errors(keystage_app: Any) -> None:
    await open_enrollment(keystage_app.extensions["keystage"])
    driver = FlowDriver(keystage_app.test_client())
    await driver.start("default-enrollment-flow")
    answer = await driver.submit(username="", email="not-an-email", password="one", password_repeat="two")
    errors = answer["response_errors"]
    assert errors["username"][0]["code"] == "required"
    assert errors["email"][0]["code"] == "invalid"
    assert errors["password_repeat"][0]["code"] == "mismatch"


async def test_remember_me_makes_a_persistent_cookie(keystage_app: Any) -> None:
    from keystage.engine.blueprints import apply_defaults

    ks = keystage_app.extensions["keystage"]
    await apply_defaults(ks)
    await ks.users.create("alice", password="correct horse battery")
    for remember, persistent in ((True, True), (False, False)):
        client = keystage_app.test_client()
        driver = FlowDriver(client)
        await driver.start("default-authentication-flow")
        await driver.submit("identification", uid_field="alice")
        assert (await driver.submit("password", password="correct horse battery"))["component"] == "user_login"
        body = {"remember_me": True} if remember else {}
        response = await client.post("/api/v1/flows/default-authentication-flow/executor",
                                     json={"component": "user_login", **body})
        set_cookie = response.headers.get("Set-Cookie", "")
        assert ("Max-Age" in set_cookie or "Expires" in set_cookie) == persistent


async def test_html_face_shows_messages_and_denials_after_a_post(app: Any) -> None:
    ks = app.extensions["keystage"]
    await make_flow(ks, "nope", [("identification", {}), ("deny", {"message": "Nope, not you."})])
    client = app.test_client()
    html = await (await client.get("/flows/nope/")).get_data(as_text=True)
    response = await client.post("/flows/nope/", form={**form_fields(html), "uid_field": "alice"})
    assert response.status_code == 403
    assert "Nope, not you." in await response.get_data(as_text=True)
    # Too many failures: the restart message is on the page the POST answers with.
    html = await (await client.get("/flows/login/")).get_data(as_text=True)
    await client.post("/flows/login/", form={**form_fields(html), "uid_field": "alice"})
    for _ in range(3):
        html = await (await client.get("/flows/login/")).get_data(as_text=True)
        response = await client.post("/flows/login/", form={**form_fields(html), "password": "bad"})
    assert response.status_code == 200
    assert "Too many failed attempts. Please start again." in await response.get_data(as_text=True)


async def test_denied_action_continue_redirects_silently(app: Any) -> None:
    ks = app.extensions["keystage"]
    flow_id = await make_flow(ks, "quiet", [("identification", {})], denied_action="continue")
    group = await ks.users.create_group("nobody-in-here")
    await ks.pool.execute("INSERT INTO policy_bindings (flow_id, group_id) VALUES ($1, $2)", flow_id, group.id)
    answer = await FlowDriver(app.test_client()).start("quiet", next="/back")
    assert answer == {"component": "redirect", "to": "/back"}
