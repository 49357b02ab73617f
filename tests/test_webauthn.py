"""WebAuthn with a software authenticator: registration, several named credentials, second factor,
sign counter checks, passwordless login (own flow and on the identification page)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from webauthn_soft import SoftAuthenticator

from keystage.engine.testing import FlowDriver, make_flow

RP_ID, ORIGIN = "127.0.0.1", "http://127.0.0.1:9000"  # from the test settings' external URL


@pytest.fixture
async def ks(keystage_app: Any) -> Any:
    ks = keystage_app.extensions["keystage"]
    assert ks.settings.external_url == ORIGIN
    await ks.users.create("erin", password="right password")
    await make_flow(ks, "plain-login", [("identification", {}), ("password", {}), ("user_login", {})])
    await make_flow(ks, "add-key", [("authenticator_webauthn", {"resident_key": "required"})],
                    designation="stage_configuration")
    return ks


async def logged_in(app: Any) -> Any:
    client = app.test_client()
    driver = FlowDriver(client)
    await driver.start("plain-login")
    await driver.submit("identification", uid_field="erin")
    assert (await driver.submit("password", password="right password"))["component"] == "redirect"
    return client


async def register(app: Any, client: Any, key: SoftAuthenticator, name: str | None = None) -> dict[str, Any]:
    driver = FlowDriver(client)
    challenge = await driver.start("add-key")
    assert challenge["component"] == "authenticator_webauthn"
    options = challenge["registration"]
    assert options["attestation"] == "none" and options["authenticatorSelection"]["residentKey"] == "required"
    fields: dict[str, Any] = {"credential": json.dumps(key.register(options))}
    if name:
        fields["name"] = name
    return await driver.submit(**fields)


async def test_register_several_named_credentials(keystage_app: Any, ks: Any) -> None:
    client = await logged_in(keystage_app)
    first, second = SoftAuthenticator(RP_ID, ORIGIN), SoftAuthenticator(RP_ID, ORIGIN)
    assert (await register(keystage_app, client, first, "Blue key"))["component"] == "redirect"
    driver = FlowDriver(client)
    options = (await driver.start("add-key"))["registration"]
    # The first one is excluded, so the browser will not register it twice.
    assert [c["id"] for c in options["excludeCredentials"]] == [json.loads(json.dumps(first.register(options)))["id"]]
    assert (await driver.submit(credential=json.dumps(second.register(options))))["component"] == "redirect"
    rows = await ks.pool.fetch("SELECT name, discoverable FROM authenticator_webauthn_credentials ORDER BY id")
    assert [(r["name"], r["discoverable"]) for r in rows] == [("Blue key", True), ("Security key or passkey", True)]


async def test_registration_from_another_origin_is_refused(keystage_app: Any, ks: Any) -> None:
    client = await logged_in(keystage_app)
    driver = FlowDriver(client)
    options = (await driver.start("add-key"))["registration"]
    key = SoftAuthenticator(RP_ID, ORIGIN)
    answer = await driver.submit(credential=json.dumps(key.register(options, origin="https://evil.example")))
    assert answer["response_errors"]["credential"][0]["code"] == "invalid"
    assert await ks.pool.fetchval("SELECT count(*) FROM authenticator_webauthn_credentials") == 0


async def test_second_factor_and_sign_counter(keystage_app: Any, ks: Any) -> None:
    key = SoftAuthenticator(RP_ID, ORIGIN)
    await register(keystage_app, await logged_in(keystage_app), key)
    await make_flow(ks, "login", [("identification", {}), ("password", {}), ("authenticator_validate", {}),
                                  ("user_login", {})])

    async def second_factor() -> FlowDriver:
        driver = FlowDriver(keystage_app.test_client())
        await driver.start("login")
        await driver.submit("identification", uid_field="erin")
        challenge = await driver.submit("password", password="right password")
        assert challenge["component"] == "authenticator_validate" and challenge["device_classes"] == ["webauthn"]
        assert challenge["webauthn"]["allowCredentials"][0]["id"]
        return driver

    driver = await second_factor()
    answer = await driver.submit(webauthn=json.dumps(key.assertion(driver.challenge["webauthn"])))
    assert answer["component"] == "redirect"
    assert await ks.pool.fetchval("SELECT sign_count FROM authenticator_webauthn_credentials") == 1
    # A counter that did not grow (a cloned key?) is refused.
    driver = await second_factor()
    stale = key.assertion(driver.challenge["webauthn"], sign_count=1)
    assert (await driver.submit(webauthn=json.dumps(stale)))["response_errors"]["code"][0]["code"] == "invalid"
    # An assertion for another challenge (a replay) is refused too.
    old = driver.challenge["webauthn"]
    driver = await second_factor()
    replay = key.assertion(old, sign_count=5)
    assert (await driver.submit(webauthn=json.dumps(replay)))["component"] == "authenticator_validate"
    fresh = key.assertion(driver.challenge["webauthn"], sign_count=6)
    assert (await driver.submit(webauthn=json.dumps(fresh)))["component"] == "redirect"


async def test_passwordless_flow(keystage_app: Any, ks: Any) -> None:
    key = SoftAuthenticator(RP_ID, ORIGIN)
    await register(keystage_app, await logged_in(keystage_app), key)
    await make_flow(ks, "passkey", [("webauthn_login", {}),
                                    ("authenticator_validate", {"not_configured_action": "deny"}), ("user_login", {})])
    client = keystage_app.test_client()
    driver = FlowDriver(client)
    challenge = await driver.start("passkey")
    assert challenge["component"] == "webauthn_login" and challenge["passkey"]["allowCredentials"] == []
    assert challenge["passkey"]["userVerification"] == "required"
    assert (await driver.submit(passkey=json.dumps(key.assertion(challenge["passkey"]))))["component"] == "redirect"
    assert await ks.pool.fetchval("SELECT username FROM events WHERE action = 'login'") == "erin"
    # Without user verification a passkey alone is not enough.
    lazy = SoftAuthenticator(RP_ID, ORIGIN, user_verification=False)
    lazy.key, lazy.credential_id, lazy.user_handle, lazy.sign_count = key.key, key.credential_id, key.user_handle, 10
    driver = FlowDriver(keystage_app.test_client())
    challenge = await driver.start("passkey")
    answer = await driver.submit(passkey=json.dumps(lazy.assertion(challenge["passkey"])))
    assert answer["response_errors"]["passkey"][0]["code"] == "invalid"


async def test_passkey_on_the_identification_page(keystage_app: Any, ks: Any) -> None:
    key = SoftAuthenticator(RP_ID, ORIGIN)
    await register(keystage_app, await logged_in(keystage_app), key)
    await make_flow(ks, "login", [("identification", {"passkey_login": True}), ("password", {}),
                                  ("authenticator_validate", {"not_configured_action": "deny"}), ("user_login", {})])
    client = keystage_app.test_client()
    body = await (await client.get("/flows/login/", headers={"Accept": "text/html"})).get_data(as_text=True)
    assert 'autocomplete="username webauthn"' in body and 'data-webauthn="conditional"' in body
    assert '<script src="/-/static/webauthn.js" defer></script>' in body
    driver = FlowDriver(keystage_app.test_client())
    challenge = await driver.start("login")
    # No password, no second factor asked: the passkey with user verification was both.
    answer = await driver.submit(passkey=json.dumps(key.assertion(challenge["passkey"])))
    assert answer["component"] == "redirect"
    # Someone else's passkey for this user handle: refused, and the page is the same identification page.
    other = SoftAuthenticator(RP_ID, ORIGIN)
    other.user_handle = key.user_handle
    driver = FlowDriver(keystage_app.test_client())
    challenge = await driver.start("login")
    answer = await driver.submit(passkey=json.dumps(other.assertion(challenge["passkey"])))
    assert answer["component"] == "identification" and answer["response_errors"]["uid_field"][0]["code"] == "invalid"
