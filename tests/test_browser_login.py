"""A person logs in through the HTML face in a real Chromium, against a real ``keystage serve``.

Screenshots land in ``test-artifacts/`` (git-ignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

from browser import DEFAULT_AUTH_FLOW, LiveServer, artifact, browser, live_server  # noqa: F401  (fixtures)

USERNAME = "alice"
PASSWORD = "correct horse battery staple"
COOKIE = "keystage_session"
TIMEOUT_MS = 15_000


def flow_path() -> str:
    return f"/flows/{DEFAULT_AUTH_FLOW}/"


def assert_at_flow_with_next_root(url: str) -> None:
    parts = urlsplit(url)
    assert parts.path == flow_path(), url
    assert parse_qs(parts.query).get("next") == ["/"], url


async def session_cookie(context: Any, server: LiveServer) -> dict[str, Any]:
    cookies = [c for c in await context.cookies(server.url) if c["name"] == COOKIE]
    assert len(cookies) == 1, await context.cookies()
    return cookies[0]


async def screenshot(page: Any, name: str) -> None:
    path = artifact(name)
    path.unlink(missing_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    assert path.exists(), path
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), (path, len(data))


async def submit(page: Any, button: str) -> None:
    """Click the form's button and wait for the POST-redirect-GET to finish loading."""
    async with page.expect_navigation(wait_until="load", timeout=TIMEOUT_MS):
        await page.get_by_role("button", name=button, exact=True).click()


async def test_login_in_chromium(browser: Any, live_server: LiveServer) -> None:  # noqa: F811
    await asyncio.to_thread(live_server.create_user, USERNAME, PASSWORD)
    context = await browser.new_context(locale="en-US", viewport={"width": 1024, "height": 768})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(f"{msg.text} ({msg.location.get('url')})")
            if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico") else None)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        # Logged out: / sends us to the default authentication flow, remembering where we were.
        response = await page.goto(live_server.url + "/")
        assert response is not None and response.status == 200, (
            f"{response and response.status} at {page.url}: is {DEFAULT_AUTH_FLOW} applied at first start?")
        assert_at_flow_with_next_root(page.url)
        assert urlsplit(page.url).netloc == f"localhost:{live_server.port}"

        # Identification: a labelled username field with autocomplete=username, focused.
        uid = page.locator("#id_uid_field")
        assert await uid.get_attribute("autocomplete") == "username"
        assert await page.locator('label[for="id_uid_field"]').count() == 1
        assert await page.evaluate("document.activeElement && document.activeElement.id") == "id_uid_field"
        await screenshot(page, "browser-login-identification.png")
        await uid.fill(USERNAME)
        await submit(page, "Continue")

        # Password: the field is labelled, announces current-password, and is the one focused.
        assert_at_flow_with_next_root(page.url)
        password = page.locator("#id_password")
        assert await password.get_attribute("autocomplete") == "current-password"
        assert await password.get_attribute("type") == "password"
        label = page.locator('label[for="id_password"]')
        assert await label.count() == 1
        assert (await label.inner_text()).strip() == "Password"
        # The accessible name comes from that label (what a screen reader announces).
        assert await page.get_by_label("Password", exact=True).get_attribute("id") == "id_password"
        assert await password.get_attribute("aria-describedby") is None, "no error yet"
        assert await page.evaluate("document.activeElement && document.activeElement.id") == "id_password"
        await screenshot(page, "browser-login-password.png")
        before_login = (await session_cookie(context, live_server))["value"]

        # Wrong password: the message is tied to the field and the field has the focus.
        await password.fill("not the password")
        await submit(page, "Sign in")
        assert_at_flow_with_next_root(page.url)
        password = page.locator("#id_password")
        described_by = await password.get_attribute("aria-describedby")
        assert described_by, "the error must be tied to the field with aria-describedby"
        error = page.locator(f"#{described_by}")
        assert await error.count() == 1
        assert await error.is_visible()
        assert (await error.inner_text()).strip() == "The username or password is not correct."
        assert await password.get_attribute("aria-invalid") == "true"
        assert await page.evaluate("document.activeElement && document.activeElement.id") == "id_password"
        assert await password.input_value() == "", "a rejected password must not be echoed back"
        await screenshot(page, "browser-login-error.png")

        # Right password.
        await password.fill(PASSWORD)
        await submit(page, "Sign in")

        # "Stay signed in": offered, unticked by default; leave it so and continue.
        remember = page.get_by_label("Stay signed in on this device")
        assert await remember.count() == 1
        assert not await remember.is_checked()
        await screenshot(page, "browser-login-stay-signed-in.png")
        await submit(page, "Continue")

        # Home, signed in.
        assert page.url == live_server.url + "/"
        await page.get_by_role("heading", name=f"Hello, {USERNAME}").wait_for()
        body = await page.locator("body").inner_text()
        assert "Hello" in body and USERNAME in body, body
        await screenshot(page, "browser-login-logged-in.png")

        cookie = await session_cookie(context, live_server)
        assert cookie["httpOnly"] is True, cookie
        assert cookie["sameSite"] == "Lax", cookie
        assert cookie["secure"] is False, "http://localhost is local development: no Secure flag"
        assert cookie["expires"] == -1, "without 'stay signed in' the cookie must end with the browser"
        assert cookie["value"] != before_login, "the session id must change at login (no fixation)"
        assert not failed, failed
        assert not console_errors, console_errors
    finally:
        await context.close()


async def test_login_without_javascript(browser: Any, live_server: LiveServer) -> None:  # noqa: F811
    await asyncio.to_thread(live_server.create_user, USERNAME, PASSWORD)
    # A phone-sized window as well: the pages must be usable there, with or without scripts.
    context = await browser.new_context(locale="en-US", java_script_enabled=False,
                                        viewport={"width": 375, "height": 667}, is_mobile=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    try:
        # Page scripts really do not run in this context.
        await page.set_content("<title>off</title><script>document.title = 'on'</script>")
        assert await page.title() == "off"
        await page.goto(live_server.url + "/")
        assert_at_flow_with_next_root(page.url)
        await screenshot(page, "browser-login-nojs-phone-identification.png")
        await page.locator("#id_uid_field").fill(USERNAME)
        await submit(page, "Continue")
        await page.locator("#id_password").fill(PASSWORD)
        await submit(page, "Sign in")
        assert not await page.get_by_label("Stay signed in on this device").is_checked()
        await submit(page, "Continue")
        assert page.url == live_server.url + "/"
        await page.get_by_role("heading", name=f"Hello, {USERNAME}").wait_for()
        body = await page.locator("body").inner_text()
        assert USERNAME in body, body
        await screenshot(page, "browser-login-nojs-phone-logged-in.png")
    finally:
        await context.close()
