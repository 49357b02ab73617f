"""Second factors: TOTP setup and login, replayed codes, recovery codes, the validate stage's branches."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from keystage.engine.testing import FlowDriver, make_flow
from keystage.engine.throttle import Throttle, throttle_of
from keystage.stages.authenticator_static import new_code, replace_codes
from keystage.stages.authenticator_totp import rfc6238

NOW = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def ks(keystage_app: Any) -> Any:
    ks = keystage_app.extensions["keystage"]
    ks.state["throttle"] = Throttle(ks, clock=Clock())
    await ks.users.create("dana", email="dana@example.com", password="right password")
    return ks


def clock(ks: Any) -> Clock:
    return throttle_of(ks).clock  # type: ignore[return-value]


def secret_of(challenge: dict[str, Any]) -> bytes:
    encoded = challenge["secret"].replace(" ", "")
    return base64.b32decode(encoded + "=" * (-len(encoded) % 8))


async def login_flow(ks: Any, slug: str = "login", **validate: Any) -> None:
    await make_flow(ks, slug, [("identification", {}), ("password", {}), ("authenticator_validate", validate),
                               ("user_login", {})])


async def to_second_factor(app: Any, slug: str = "login") -> FlowDriver:
    driver = FlowDriver(app.test_client())
    await driver.start(slug)
    await driver.submit("identification", uid_field="dana")
    await driver.submit("password", password="right password")
    return driver


async def enrol_totp(app: Any, ks: Any) -> bytes:
    await make_flow(ks, "setup-totp", [("authenticator_totp", {"issuer": "Example"})],
                    designation="stage_configuration")
    await make_flow(ks, "plain-login", [("identification", {}), ("password", {}), ("user_login", {})])
    client = app.test_client()
    driver = FlowDriver(client)
    await driver.start("plain-login")
    await driver.submit("identification", uid_field="dana")
    assert (await driver.submit("password", password="right password"))["component"] == "redirect"
    driver = FlowDriver(client)
    challenge = await driver.start("setup-totp")
    assert challenge["component"] == "authenticator_totp"
    assert challenge["config_url"].startswith("otpauth://totp/Example:dana@example.com?secret=")
    assert challenge["qr_svg"].startswith("<svg") and "<script" not in challenge["qr_svg"]
    secret = secret_of(challenge)
    wrong = await driver.submit(code="000000" if rfc6238.code_at(secret, NOW) != "000000" else "111111")
    assert wrong["response_errors"]["code"][0]["code"] == "invalid"
    assert (await driver.submit(code=rfc6238.code_at(secret, NOW)))["component"] == "redirect"
    assert await ks.pool.fetchval("SELECT count(*) FROM authenticator_totp_devices") == 1
    # The secret is not stored in the clear.
    assert secret not in await ks.pool.fetchval("SELECT secret FROM authenticator_totp_devices")
    return secret


async def test_totp_setup_then_login_and_replay_refused(keystage_app: Any, ks: Any) -> None:
    secret = await enrol_totp(keystage_app, ks)
    await login_flow(ks)
    clock(ks).now = NOW + 120
    driver = await to_second_factor(keystage_app)
    assert driver.component == "authenticator_validate" and driver.challenge["device_classes"] == ["totp"]
    code = rfc6238.code_at(secret, NOW + 120 - 30)  # one step behind: accepted
    assert (await driver.submit(code=code))["component"] == "redirect"
    # The same code again, from another login in its window: refused.
    driver = await to_second_factor(keystage_app)
    assert (await driver.submit(code=code))["response_errors"]["code"][0]["code"] == "invalid"
    # Two steps away: refused; the current one: accepted.
    assert (await driver.submit(code=rfc6238.code_at(secret, NOW + 120 + 60)))["component"] == "authenticator_validate"
    assert (await driver.submit(code=rfc6238.code_at(secret, NOW + 120)))["component"] == "redirect"


async def test_totp_html_setup_page_shows_an_inline_svg(keystage_app: Any, ks: Any) -> None:
    await make_flow(ks, "setup-totp", [("authenticator_totp", {})], designation="stage_configuration")
    await make_flow(ks, "plain-login", [("identification", {}), ("password", {}), ("user_login", {})])
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("plain-login")
    await driver.submit("identification", uid_field="dana")
    await driver.submit("password", password="right password")
    body = await (await client.get("/flows/setup-totp/", headers={"Accept": "text/html"})).get_data(as_text=True)
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in body and 'autocomplete="one-time-code"' in body


async def test_totp_setup_needs_an_authenticated_user(keystage_app: Any, ks: Any) -> None:
    await make_flow(ks, "setup-totp", [("authenticator_totp", {})], designation="stage_configuration")
    answer = await FlowDriver(keystage_app.test_client()).start("setup-totp")
    assert answer["component"] == "access-denied"


async def test_recovery_codes_single_use_and_regenerable(keystage_app: Any, ks: Any) -> None:
    await make_flow(ks, "setup-static", [("authenticator_static", {})], designation="stage_configuration")
    await make_flow(ks, "plain-login", [("identification", {}), ("password", {}), ("user_login", {})])
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("plain-login")
    await driver.submit("identification", uid_field="dana")
    await driver.submit("password", password="right password")
    driver = FlowDriver(client)
    codes = (await driver.start("setup-static"))["codes"]
    assert len(codes) == 10 == len(set(codes))
    assert (await driver.submit())["component"] == "redirect"
    stored = await ks.pool.fetch("SELECT code_hash FROM authenticator_static_codes")
    assert len(stored) == 10 and all(len(r["code_hash"]) == 32 for r in stored)  # SHA-256, not the codes
    await login_flow(ks)
    driver = await to_second_factor(keystage_app)
    assert driver.challenge["device_classes"] == ["static"]
    assert (await driver.submit(code=codes[3].upper().replace("-", " ")))["component"] == "redirect"
    driver = await to_second_factor(keystage_app)
    assert (await driver.submit(code=codes[3]))["response_errors"]["code"][0]["code"] == "invalid"  # used
    # Regenerating replaces the set: the old codes stop working.
    user_id = await ks.pool.fetchval("SELECT id FROM users WHERE username = 'dana'")
    await replace_codes(ks, user_id, [new_code() for _ in range(10)])
    assert (await driver.submit(code=codes[4]))["response_errors"]["code"][0]["code"] == "invalid"


async def test_validate_without_devices_skip_deny_configure(keystage_app: Any, ks: Any) -> None:
    await login_flow(ks, "skip", not_configured_action="skip")
    assert (await to_second_factor(keystage_app, "skip")).component == "redirect"
    await login_flow(ks, "deny", not_configured_action="deny")
    driver = await to_second_factor(keystage_app, "deny")
    assert driver.component == "access-denied"
    await make_flow(ks, "enrol-totp", [("authenticator_totp", {})], designation="stage_configuration")
    await login_flow(ks, "configure", not_configured_action="configure", configuration_flow="enrol-totp")
    driver = await to_second_factor(keystage_app, "configure")
    assert driver.component == "authenticator_validate" and driver.challenge["configure"] == "authenticator_totp"
    secret = secret_of(driver.challenge)
    assert (await driver.submit(code=rfc6238.code_at(secret, NOW)))["component"] == "redirect"
    # Next time the new authenticator is asked for.
    clock(ks).now = NOW + 90
    driver = await to_second_factor(keystage_app, "configure")
    assert driver.challenge["device_classes"] == ["totp"]


async def test_validate_offers_only_allowed_classes(keystage_app: Any, ks: Any) -> None:
    user_id = await ks.pool.fetchval("SELECT id FROM users WHERE username = 'dana'")
    codes = [new_code() for _ in range(10)]
    await replace_codes(ks, user_id, codes)
    await login_flow(ks, "totp-only", device_classes=["totp"], not_configured_action="deny")
    assert (await to_second_factor(keystage_app, "totp-only")).component == "access-denied"


async def test_code_attempts_are_rate_limited_per_user(keystage_app: Any, ks: Any) -> None:
    user_id = await ks.pool.fetchval("SELECT id FROM users WHERE username = 'dana'")
    codes = [new_code() for _ in range(10)]
    await replace_codes(ks, user_id, codes)
    await login_flow(ks)
    driver = await to_second_factor(keystage_app)
    for _ in range(5):
        assert (await driver.submit(code="aaaaa-aaaaa"))["response_errors"]["code"][0]["code"] == "invalid"
    # Even the right code waits now, from this client or another.
    assert (await driver.submit(code=codes[0]))["response_errors"]["code"][0]["code"] == "throttled"
    other = await to_second_factor(keystage_app)
    assert (await other.submit(code=codes[0]))["response_errors"]["code"][0]["code"] == "throttled"
    clock(ks).now += 2
    assert (await other.submit(code=codes[0]))["component"] == "redirect"
    assert await ks.pool.fetchval("SELECT count(*) FROM events WHERE action = 'login_failed' "
                                  "AND context->>'stage' = 'authenticator_validate'") == 5


async def test_html_pages_of_the_validate_stage(keystage_app: Any, ks: Any) -> None:
    await make_flow(ks, "enrol-totp", [("authenticator_totp", {})], designation="stage_configuration")
    await login_flow(ks, "configure", not_configured_action="configure", configuration_flow="enrol-totp")
    html = {"Accept": "text/html"}
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("configure")
    await driver.submit("identification", uid_field="dana")
    await driver.submit("password", password="right password")
    body = await (await client.get("/flows/configure/", headers=html)).get_data(as_text=True)
    # Enrolling inside the validate step: the TOTP setup page, answered as authenticator_validate.
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in body and 'name="code"' in body
    assert 'name="component" value="authenticator_validate"' in body
    user_id = await ks.pool.fetchval("SELECT id FROM users WHERE username = 'dana'")
    await replace_codes(ks, user_id, [new_code() for _ in range(10)])
    await ks.pool.execute(
        "INSERT INTO authenticator_webauthn_credentials (user_id, name, credential_id, public_key) "
        "VALUES ($1, 'key', '\\x01', '\\x02')", user_id)
    await login_flow(ks, "login")
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    await driver.start("login")
    await driver.submit("identification", uid_field="dana")
    await driver.submit("password", password="right password")
    body = await (await client.get("/flows/login/", headers=html)).get_data(as_text=True)
    assert "Enter one of your recovery codes." in body and 'autocomplete="one-time-code"' in body
    assert 'data-webauthn="authenticate"' in body and 'id="webauthn-authenticate"' in body
    assert 'data-msg-failed="Your browser could not use the security key or passkey. Please try again."' in body
    german = await (await client.get("/flows/login/?locale=de", headers=html)).get_data(as_text=True)
    assert "Geben Sie einen Ihrer Wiederherstellungscodes ein." in german
    assert "Sicherheitsschlüssel oder Passkey verwenden" in german
