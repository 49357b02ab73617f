"""End to end in Chromium with its virtual authenticator (DevTools WebAuthn domain, RP id localhost):
register a passkey on the setup page, then sign in with it and no password."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from browser import LiveServer, artifact, browser, live_server  # noqa: F401  (fixtures)

TIMEOUT_MS = 15_000
BLUEPRINT = """
version: 1
metadata: {name: passkey-test}
entries:
  - model: flow
    identifiers: {slug: add-passkey}
    attrs: {name: Add a passkey, title: Add a passkey, designation: stage_configuration}
  - model: stage
    identifiers: {name: add-passkey-webauthn}
    attrs: {type: authenticator_webauthn, config: {resident_key: required, user_verification: required}}
  - model: flow_stage_binding
    identifiers: {flow: add-passkey, stage: add-passkey-webauthn, order: 10}
  - model: flow
    identifiers: {slug: passkey-login}
    attrs: {name: Passkey login, title: Sign in, designation: authentication}
  - model: stage
    identifiers: {name: passkey-login-webauthn}
    attrs: {type: webauthn_login, config: {}}
  - model: stage
    identifiers: {name: passkey-login-login}
    attrs: {type: user_login, config: {}}
  - model: flow_stage_binding
    identifiers: {flow: passkey-login, stage: passkey-login-webauthn, order: 10}
  - model: flow_stage_binding
    identifiers: {flow: passkey-login, stage: passkey-login-login, order: 20}
  - model: flow
    identifiers: {slug: login-with-autofill}
    attrs: {name: Autofill, title: Sign in, designation: authentication}
  - model: stage
    identifiers: {name: autofill-identification}
    attrs: {type: identification, config: {passkey_login: true}}
  - model: stage
    identifiers: {name: autofill-password}
    attrs: {type: password, config: {}}
  - model: flow_stage_binding
    identifiers: {flow: login-with-autofill, stage: autofill-identification, order: 10}
  - model: flow_stage_binding
    identifiers: {flow: login-with-autofill, stage: autofill-password, order: 20}
  - model: flow_stage_binding
    identifiers: {flow: login-with-autofill, stage: passkey-login-login, order: 30}
"""


async def submit(page: Any, button: str) -> None:
    async with page.expect_navigation(wait_until="load", timeout=TIMEOUT_MS):
        await page.get_by_role("button", name=button, exact=True).click()


async def test_register_a_passkey_then_sign_in_without_a_password(
        browser: Any, live_server: LiveServer, tmp_path: Path) -> None:  # noqa: F811
    await asyncio.to_thread(live_server.create_user, "alice", "correct horse battery staple")
    blueprint = tmp_path / "passkey.yaml"
    blueprint.write_text(BLUEPRINT)
    await asyncio.to_thread(live_server.cli, "blueprint", "apply", str(blueprint))
    context = await browser.new_context(locale="en-US")
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    authenticator = (await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}}))["authenticatorId"]
    try:
        await page.goto(live_server.url + "/flows/default-authentication-flow/")
        await page.locator("#id_uid_field").fill("alice")
        await submit(page, "Continue")
        await page.locator("#id_password").fill("correct horse battery staple")
        await submit(page, "Sign in")
        await submit(page, "Continue")  # "stay signed in?"
        assert "Hello, alice" in await page.content(), await page.content()
        await page.goto(live_server.url + "/flows/add-passkey/")
        assert await page.locator("#id_name").count() == 1, await page.content()
        await page.locator("#id_name").fill("Laptop")
        await submit(page, "Add a security key or passkey")
        await page.screenshot(path=str(artifact("browser-passkey-registered.png")))
        credentials = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))["credentials"]
        assert len(credentials) == 1 and credentials[0]["isResidentCredential"] and credentials[0]["rpId"] == "localhost"
        assert "Hello, alice" in await page.content()

        # Signed out: the passkey alone signs in, no username typed, no password.
        await context.clear_cookies()
        await page.goto(live_server.url + "/flows/passkey-login/")
        assert await page.locator("#id_uid_field").count() == 0
        await submit(page, "Sign in with a passkey")
        await page.screenshot(path=str(artifact("browser-passkey-login.png")))
        assert "You are signed in as alice." in await page.content()
        credentials = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))["credentials"]
        assert credentials[0]["signCount"] >= 1

        # The identification page offers the passkey in the username field's autofill (conditional
        # mediation); the virtual authenticator picks it at once: signed in, nothing typed, no password page.
        await context.clear_cookies()
        await page.goto(live_server.url + "/flows/login-with-autofill/?next=/", wait_until="commit")
        await page.wait_for_url(live_server.url + "/", timeout=TIMEOUT_MS)
        await page.get_by_text("You are signed in as alice.").wait_for()
        assert not errors, errors
    finally:
        await context.close()
