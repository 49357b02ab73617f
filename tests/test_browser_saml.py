"""IdP-initiated SAML sign-in from the library in a real Chromium, against a real ``keystage serve``:
the page carrying the Response posts itself to the SP (autosubmit.js), or, with JavaScript off, on a
click. The SP is a small HTTP server in the test; python3-saml (strict) checks what it received."""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from browser import LiveServer, artifact, browser, live_server  # noqa: F401  (fixtures)
from saml_sp import OneLoginSP

from keystage.engine.testing import free_port, skip_or_fail

USERNAME = "alice"
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 15_000


class ServiceProvider:
    """An ACS endpoint on 127.0.0.1 that keeps every form posted to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.acs = f"http://127.0.0.1:{self.port}/acs"
        self.received: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                owner.received.append({k: v[0] for k, v in form.items()})
                body = b"<!doctype html><title>SP</title><h1>Signed in at the SP</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def sp_server() -> Iterator[ServiceProvider]:
    if shutil.which("xmlsec1") is None:
        skip_or_fail("xmlsec1 is not installed (Debian: apt-get install xmlsec1)")
    sp = ServiceProvider()
    yield sp
    sp.server.shutdown()


def prepare(server: LiveServer, sp: ServiceProvider) -> OneLoginSP:
    blueprint = server.data_dir.parent / "wiki-saml.yaml"
    blueprint.write_text(json.dumps({"version": 1, "metadata": {"name": "wiki-saml"}, "entries": [
        {"model": "provider", "identifiers": {"name": "wiki"}, "attrs": {"type": "saml", "config": {
            "sp_entity_id": "https://wiki.example.org/metadata", "acs_urls": [sp.acs],
            "default_relay_state": "/start"}}},
        {"model": "application", "identifiers": {"slug": "wiki"}, "attrs": {"name": "Team wiki", "provider": "wiki"}},
    ]}))
    server.cli("blueprint", "apply", str(blueprint))
    server.create_user(USERNAME, PASSWORD)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/saml/wiki/metadata", timeout=10) as answer:
        metadata = answer.read().decode()
    return OneLoginSP(metadata, entity_id="https://wiki.example.org/metadata", acs=sp.acs, sign_requests=False)


async def sign_in_and_open_the_app(page: Any, server: LiveServer) -> None:
    await page.goto(server.url + "/")
    await page.locator("#id_uid_field").fill(USERNAME)
    await page.get_by_role("button", name="Continue", exact=True).click()
    await page.locator("#id_password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.get_by_role("button", name="Continue", exact=True).click()  # "stay signed in" left unticked
    await page.get_by_role("link", name="Team wiki").wait_for()


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
async def test_idp_initiated_sign_in_from_the_library(browser: Any, live_server: LiveServer,  # noqa: F811
                                                      sp_server: ServiceProvider, javascript: bool) -> None:
    sp = await asyncio.to_thread(prepare, live_server, sp_server)
    context = await browser.new_context(locale="en-US", java_script_enabled=javascript)
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text)  # keystage's pages only (not the SP's favicon)
            if msg.type == "error" and msg.location.get("url", "").startswith(live_server.url) else None)
    try:
        await sign_in_and_open_the_app(page, live_server)
        await page.get_by_role("link", name="Team wiki").click()
        if javascript:
            await page.wait_for_url(sp_server.acs)  # posted by autosubmit.js, no click
        else:
            await page.get_by_role("heading", name="Signing you in").wait_for()
            assert "You are being sent back to Team wiki." in await page.locator("body").inner_text()
            await page.screenshot(path=str(artifact("browser-saml-post-page.png")), full_page=True)
            assert sp_server.received == []
            await page.get_by_role("button", name="Continue", exact=True).click()
            await page.wait_for_url(sp_server.acs)
        await page.get_by_role("heading", name="Signed in at the SP").wait_for()
        assert len(sp_server.received) == 1 and sp_server.received[0]["RelayState"] == "/start"
        auth = sp.accept(sp_server.received[0], None)
        assert auth.get_errors() == [], auth.get_last_error_reason()
        assert auth.get_attributes()["username"] == [USERNAME]
        assert errors == [], errors  # no CSP violation from the page's script
    finally:
        await context.close()
