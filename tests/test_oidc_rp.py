"""An independent relying party against a real ``keystage serve``: panva's ``openid-client`` (npm), run by Node.

It checks what authlib-based tests cannot catch by construction: discovery, the issuer, ``iss`` in
the authorization response, PKCE, the nonce, the ID token's signature against JWKS, refresh with
rotation (and that the rotated token is refused), userinfo, introspection.

Needs ``node`` and the ``openid-client`` package: ``KEYSTAGE_TEST_OPENID_CLIENT`` names a folder
with ``node_modules/openid-client`` (default /tmp/ks-rp; set it up with
``npm install --prefix /tmp/ks-rp openid-client``). Skipped without them (failed in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from keystage.engine.testing import base_settings, free_port, fresh_database, skip_or_fail

KEYSTAGE = Path(sys.executable).parent / "keystage"
RP_DIR = Path(os.environ.get("KEYSTAGE_TEST_OPENID_CLIENT", "/tmp/ks-rp"))
RP_SCRIPT = Path(__file__).parent / "oidc_rp" / "rp.mjs"
SECRET = "rp-" + "s" * 45
REDIRECT = "http://127.0.0.1:1/callback"  # never contacted: the test reads the code from the redirect
PASSWORD = "correct horse battery staple"




async def _prepare(database_url: str, data_dir: Path) -> None:
    from keystage.engine.blueprints import apply_defaults
    from keystage.engine.runtime import Keystage
    from keystage.engine.testing import apply_blueprint_to

    kernel = Keystage(base_settings(database_url, data_dir))
    await kernel.open(migrate=True)
    try:
        await apply_defaults(kernel)
        await kernel.users.create("alice", password=PASSWORD, email="alice@example.org", display_name="Alice")
        await apply_blueprint_to(kernel, f"""
version: 1
metadata: {{name: rp}}
entries:
  - model: provider
    identifiers: {{name: rp}}
    attrs:
      type: oidc
      config:
        client_id: node-rp
        client_secret: {SECRET}
        redirect_uris: ["{REDIRECT}"]
        authorization_flow: default-provider-authorization-implicit-consent
  - model: application
    identifiers: {{slug: rp}}
    attrs: {{name: Node RP, provider: rp}}
""")
    finally:
        await kernel.close()


@pytest.fixture
def server(tmp_path: Path, keystage_server_url: str) -> Iterator[str]:
    if shutil.which("node") is None or not (RP_DIR / "node_modules" / "openid-client").is_dir():
        skip_or_fail(f"node and openid-client are needed (npm install --prefix {RP_DIR} openid-client)")
    with fresh_database(keystage_server_url, prefix="keystage_rp") as database_url:
        yield from _serve(tmp_path, database_url)


def _serve(tmp_path: Path, database_url: str) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    proc = None
    try:
        asyncio.run(_prepare(database_url, tmp_path / "prepare"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTAGE_")}
        env.update({"KEYSTAGE_DATABASE_URL": database_url, "KEYSTAGE_DATA_DIR": str(tmp_path / "data"),
                    "KEYSTAGE_SECRET_KEY": secrets.token_urlsafe(32), "KEYSTAGE_EXTERNAL_URL": base})
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(KEYSTAGE), "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 40
        while True:
            try:
                if httpx.get(base + "/-/health/ready/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("keystage serve did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.1)
        yield base
        assert "Traceback" not in log_path.read_text(errors="replace"), log_path.read_text(errors="replace")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _node(*args: str, **env: str) -> dict[str, Any]:
    done = subprocess.run(["node", str(RP_SCRIPT), *args], cwd=RP_DIR, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENID_CLIENT_DIR": str(RP_DIR), **env})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _sign_in_and_get_callback(base: str, url: str) -> str:
    with httpx.Client(base_url=base) as browser:
        response = browser.get(url)
        for _ in range(10):
            assert response.status_code in (302, 303), response.text[:500]
            location = response.headers["location"]
            if location.startswith(REDIRECT):
                return location
            if location.startswith("/flows/default-authentication-flow/"):
                next_path = parse_qs(urlsplit(location).query)["next"][0]
                executor = "/api/v1/flows/default-authentication-flow/executor"
                challenge = browser.get(executor, params={"next": next_path, "restart": "1"}).json()
                answers = {"identification": {"uid_field": "alice"}, "password": {"password": PASSWORD},
                           "user_login": {"remember_me": False}}
                while challenge["component"] != "redirect":
                    challenge = browser.post(executor, json={"component": challenge["component"],
                                                             **answers[challenge["component"]]}).json()
                location = challenge["to"]
            response = browser.get(location)
    raise AssertionError("no redirect to the client")


def test_openid_client_code_flow_refresh_userinfo_introspection(server: str) -> None:
    started = _node("start", server, "node-rp", SECRET, REDIRECT)
    callback = _sign_in_and_get_callback(server, started["url"])
    seen = _node("finish", server, "node-rp", SECRET, REDIRECT, callback, started["verifier"], started["state"],
                 started["nonce"])
    claims = seen["claims"]
    assert claims["iss"] == server and claims["aud"] == "node-rp" and claims["nonce"] == started["nonce"]
    assert claims["preferred_username"] == "alice" and claims["email"] == "alice@example.org"
    assert seen["userinfo"]["sub"] == claims["sub"] and seen["userinfo"]["name"] == "Alice"
    assert seen["introspected"]["active"] is True and seen["introspected"]["client_id"] == "node-rp"
    assert seen["reuse"] == "invalid_grant"


def test_openid_client_with_par_and_dpop(server: str) -> None:
    started = _node("start", server, "node-rp", SECRET, REDIRECT, RP_PAR="1")
    assert "request_uri=" in started["url"] and "code_challenge" not in started["url"]
    callback = _sign_in_and_get_callback(server, started["url"])
    seen = _node("finish", server, "node-rp", SECRET, REDIRECT, callback, started["verifier"], started["state"],
                 started["nonce"], RP_DPOP="1")
    assert seen["tokenType"].lower() == "dpop"
    assert seen["userinfo"]["preferred_username"] == "alice"
    assert seen["introspected"]["cnf"]["jkt"] and seen["introspected"]["token_type"] == "DPoP"
    assert seen["reuse"] == "invalid_grant"
