"""OpenID Connect provider: the code + PKCE flow with authlib's client, refresh rotation, client credentials,
userinfo, keys, and the attacks the issue lists. Real PostgreSQL; the app runs in-process behind httpx."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from keystage.engine.blueprints import apply_defaults
from keystage.engine.testing import apply_blueprint_to, form_value, kernel_of, sign_in, walk

BASE = "http://127.0.0.1:9000"
SECRET = "s3cr3t-" + "x" * 40
REDIRECT = "https://grafana.example.org/login/generic_oauth"
PASSWORD = "correct horse battery staple"

BLUEPRINT = f"""
version: 1
metadata: {{name: oidc-test}}
entries:
  - model: provider
    identifiers: {{name: grafana}}
    attrs:
      type: oidc
      config:
        client_id: grafana
        client_secret: {SECRET}
        redirect_uris: ["{REDIRECT}"]
        post_logout_redirect_uris: ["https://grafana.example.org/logged-out"]
        grant_types: [authorization_code, refresh_token, client_credentials,
                      "urn:ietf:params:oauth:grant-type:device_code"]
        scopes: [openid, profile, email, groups, offline_access, "api:read"]
        authorization_flow: default-provider-authorization-implicit-consent
  - model: application
    identifiers: {{slug: grafana}}
    attrs: {{name: Grafana, provider: grafana, launch_url: "https://grafana.example.org/", group: Monitoring}}
  - model: provider
    identifiers: {{name: spa}}
    attrs:
      type: oidc
      config:
        client_id: spa
        client_type: public
        redirect_uris: ["http://localhost:5173/callback"]
        grant_types: [authorization_code, refresh_token, "urn:ietf:params:oauth:grant-type:device_code"]
        authorization_flow: default-provider-authorization-explicit-consent
        access_token_format: opaque
        signing_alg: ES256
  - model: application
    identifiers: {{slug: spa}}
    attrs: {{name: The SPA, provider: spa}}
"""


@pytest.fixture
async def oidc(keystage_app: Any, user_factory: Any) -> Any:
    kernel = kernel_of(keystage_app)
    await apply_defaults(kernel)
    await apply_blueprint_to(kernel, BLUEPRINT)
    user = await user_factory("alice", password=PASSWORD, email="alice@example.org", groups=["staff"],
                              display_name="Alice Liddell")
    transport = httpx.ASGITransport(app=keystage_app)
    browser = httpx.AsyncClient(transport=transport, base_url=BASE)
    yield {"app": keystage_app, "kernel": kernel, "user": user, "browser": browser, "transport": transport}
    await browser.aclose()


async def login(browser: httpx.AsyncClient, next_path: str, username: str = "alice") -> str:
    """Sign in through the JSON flow face; returns where the flow sends the user."""
    return await sign_in(browser, next_path, username, PASSWORD)


async def follow(browser: httpx.AsyncClient, url: str, *, consent: bool = True) -> httpx.URL:
    """Follow redirects like a browser until keystage sends the user to another site; sign in and consent on the way."""
    landed = await walk(browser, url, username="alice", password=PASSWORD, consent=consent)
    if isinstance(landed, httpx.Response):
        raise AssertionError(f"{landed.url}: {landed.status_code} {landed.text[:500]}")
    return landed


def _csrf(html: str) -> str:
    return form_value(html, "csrf_token")


def kid_of(token: str) -> str:
    return str(extract_compact(token.encode()).headers()["kid"])


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


async def authorize(env: dict[str, Any], **params: str) -> dict[str, list[str]]:
    query = {"response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT,
             "scope": "openid profile email groups offline_access", "state": "st", "nonce": "n0"}
    query.update({k: v for k, v in params.items() if v is not None})
    query = {k: v for k, v in query.items() if v != ""}
    landed = await follow(env["browser"], "/oauth2/authorize?" + urlencode(query))
    return parse_qs(landed.query.decode())


def rp(env: dict[str, Any], client_id: str = "grafana", secret: str | None = SECRET, **kwargs: Any) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(client_id, secret, transport=env["transport"], base_url=BASE,
                             token_endpoint_auth_method="client_secret_basic" if secret else "none", **kwargs)


async def test_discovery_and_jwks(oidc: Any) -> None:
    browser = oidc["browser"]
    config = (await browser.get("/.well-known/openid-configuration")).json()
    assert config["issuer"] == BASE
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["token_endpoint"] == f"{BASE}/oauth2/token"
    jwks = (await browser.get("/oauth2/jwks")).json()
    assert isinstance(jwks["keys"], list)


async def test_code_flow_with_pkce_refresh_rotation_and_userinfo(oidc: Any) -> None:
    verifier, challenge = pkce()
    answer = await authorize(oidc, code_challenge=challenge, code_challenge_method="S256")
    assert answer["state"] == ["st"] and answer["iss"] == [BASE]
    code = answer["code"][0]
    async with rp(oidc, code_challenge_method="S256") as client:
        token = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="authorization_code", code=code,
                                         redirect_uri=REDIRECT, code_verifier=verifier)
        assert token["token_type"].lower() == "bearer" and token["refresh_token"]
        keys = KeySet.import_key_set((await oidc["browser"].get("/oauth2/jwks")).json())
        id_token = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
        claims = id_token.claims
        assert claims["iss"] == BASE and claims["aud"] == "grafana" and claims["nonce"] == "n0"
        assert claims["sub"] == str(oidc["user"].id) and claims["email"] == "alice@example.org"
        assert claims["groups"] == ["staff"] and claims["name"] == "Alice Liddell"
        info = (await client.get(f"{BASE}/oauth2/userinfo")).json()
        assert info["preferred_username"] == "alice" and info["sub"] == claims["sub"]
        # The code is single-use: replay fails and revokes what it gave.
        replay = await oidc["browser"].post("/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
            auth=("grafana", SECRET))
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        gone = await oidc["browser"].get("/oauth2/userinfo",
                                         headers={"Authorization": f"Bearer {token['access_token']}"})
        assert gone.status_code == 401
        assert 'error="invalid_token"' in gone.headers["www-authenticate"]


async def test_refresh_rotation_and_reuse_detection(oidc: Any) -> None:
    verifier, challenge = pkce()
    code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    async with rp(oidc) as client:
        first = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="authorization_code", code=code,
                                         redirect_uri=REDIRECT, code_verifier=verifier)
        second = await client.refresh_token(f"{BASE}/oauth2/token", refresh_token=first["refresh_token"])
        assert second["refresh_token"] != first["refresh_token"]
        # The old refresh token comes back: reuse. Everything of the grant is revoked.
        reuse = await oidc["browser"].post("/oauth2/token", data={
            "grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, auth=("grafana", SECRET))
        assert reuse.json()["error"] == "invalid_grant"
        again = await oidc["browser"].post("/oauth2/token", data={
            "grant_type": "refresh_token", "refresh_token": second["refresh_token"]}, auth=("grafana", SECRET))
        assert again.json()["error"] == "invalid_grant"
        info = await oidc["browser"].get("/oauth2/userinfo",
                                         headers={"Authorization": f"Bearer {second['access_token']}"})
        assert info.status_code == 401


async def test_client_credentials(oidc: Any) -> None:
    async with rp(oidc) as client:
        token = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="client_credentials", scope="api:read")
    keys = KeySet.import_key_set((await oidc["browser"].get("/oauth2/jwks")).json())
    claims = jwt.decode(token["access_token"], keys, algorithms=["RS256"]).claims
    assert claims["sub"] == "grafana" and claims["scope"] == "api:read" and "refresh_token" not in token
    wrong = await oidc["browser"].post("/oauth2/token", data={"grant_type": "client_credentials"},
                                       auth=("grafana", "not-the-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert "Traceback" not in wrong.text
    scope = await oidc["browser"].post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                                       auth=("grafana", SECRET))
    assert scope.json()["error"] == "invalid_scope"
    public = await oidc["browser"].post("/oauth2/token", data={"grant_type": "client_credentials",
                                                               "client_id": "spa"})
    assert public.json()["error"] == "unauthorized_client"


async def test_public_client_explicit_consent_opaque_es256(oidc: Any) -> None:
    verifier, challenge = pkce()
    query = {"response_type": "code", "client_id": "spa", "redirect_uri": "http://localhost:5173/callback",
             "scope": "openid email", "state": "s2", "code_challenge": challenge, "code_challenge_method": "S256"}
    landed = await follow(oidc["browser"], "/oauth2/authorize?" + urlencode(query))
    code = parse_qs(landed.query.decode())["code"][0]
    response = await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": "http://localhost:5173/callback",
        "code_verifier": verifier, "client_id": "spa"})
    token = response.json()
    assert token["access_token"].count(".") == 0 and "refresh_token" not in token
    keys = KeySet.import_key_set((await oidc["browser"].get("/oauth2/jwks")).json())
    assert jwt.decode(token["id_token"], keys, algorithms=["ES256"]).claims["email"] == "alice@example.org"
    # Consent is remembered: prompt=none now works without asking.
    query.update(prompt="none", state="s3")
    landed = await follow(oidc["browser"], "/oauth2/authorize?" + urlencode(query))
    assert "code" in parse_qs(landed.query.decode())
    # More scopes than consented: prompt=none cannot ask, so consent_required (no bypass).
    query.update(scope="openid email profile")
    landed = await follow(oidc["browser"], "/oauth2/authorize?" + urlencode(query))
    assert parse_qs(landed.query.decode())["error"] == ["consent_required"]


async def test_consent_denied(oidc: Any) -> None:
    query = {"response_type": "code", "client_id": "spa", "redirect_uri": "http://localhost:5173/callback",
             "scope": "openid", "state": "s", "code_challenge": pkce()[1], "code_challenge_method": "S256"}
    landed = await follow(oidc["browser"], "/oauth2/authorize?" + urlencode(query), consent=False)
    assert parse_qs(landed.query.decode())["error"] == ["access_denied"]


async def test_prompt_none_without_session(oidc: Any) -> None:
    response = await oidc["browser"].get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid",
        "state": "x", "prompt": "none"}))
    assert response.status_code == 302
    assert parse_qs(urlsplit(response.headers["location"]).query)["error"] == ["login_required"]


@pytest.mark.parametrize("redirect_uri", [
    REDIRECT + "/../evil", REDIRECT + "x", REDIRECT[:-3], REDIRECT.upper(), REDIRECT.replace("/login", "/%6Cogin"),
    "https://evil.example.org/login/generic_oauth", REDIRECT + "?next=https://evil.example.org", REDIRECT + "#x",
])
async def test_redirect_uri_variations_are_refused_without_redirect(oidc: Any, redirect_uri: str) -> None:
    response = await oidc["browser"].get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": redirect_uri, "scope": "openid"}))
    assert response.status_code == 400 and "location" not in response.headers


async def test_open_redirect_through_next_is_refused(oidc: Any) -> None:
    to = await login(oidc["browser"], "//evil.example.org/")
    assert to == "/"


@pytest.mark.parametrize("params,error", [
    ({"client_id": "spa", "redirect_uri": "http://localhost:5173/callback"}, "invalid_request"),  # public, no PKCE
    ({"code_challenge": "a" * 43, "code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": "a" * 43}, "invalid_request"),  # method missing means plain
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "openid admin"}, "invalid_scope"),
    ({"prompt": "none login"}, "invalid_request"),
])
async def test_authorize_errors_go_back_to_the_client(oidc: Any, params: dict[str, str], error: str) -> None:
    query = {"response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid",
             "state": "z", **params}
    response = await oidc["browser"].get("/oauth2/authorize?" + urlencode(query))
    assert response.status_code == 302
    answer = parse_qs(urlsplit(response.headers["location"]).query)
    assert answer["error"] == [error] and answer["state"] == ["z"]


async def test_pkce_wrong_or_missing_verifier(oidc: Any) -> None:
    verifier, challenge = pkce()
    for bad in ("", secrets.token_urlsafe(48)):
        code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
        if bad:
            data["code_verifier"] = bad
        response = await oidc["browser"].post("/oauth2/token", data=data, auth=("grafana", SECRET))
        assert response.json()["error"] == "invalid_grant"


async def test_code_of_another_client(oidc: Any) -> None:
    verifier, challenge = pkce()
    code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    response = await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
        "client_id": "spa"})
    assert response.json()["error"] == "invalid_grant"


async def test_tokens_stop_working_when_user_is_deactivated(oidc: Any) -> None:
    verifier, challenge = pkce()
    code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    response = await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        auth=("grafana", SECRET))
    token = response.json()
    await oidc["kernel"].pool.execute("UPDATE users SET is_active = false WHERE id = $1", oidc["user"].id)
    info = await oidc["browser"].get("/oauth2/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.status_code == 401
    refresh = await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"]}, auth=("grafana", SECRET))
    assert refresh.json()["error"] == "invalid_grant"


async def test_expired_tokens_and_codes(oidc: Any) -> None:
    verifier, challenge = pkce()
    code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    await oidc["kernel"].pool.execute("UPDATE oidc_codes SET expires_at = now() - interval '1 second'")
    response = await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        auth=("grafana", SECRET))
    assert response.json()["error"] == "invalid_grant"
    code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    token = (await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        auth=("grafana", SECRET))).json()
    await oidc["kernel"].pool.execute("UPDATE oidc_tokens SET expires_at = now() - interval '1 second'")
    info = await oidc["browser"].get("/oauth2/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert info.status_code == 401


async def test_application_policy_denies(oidc: Any, apply_blueprint: Any) -> None:
    await apply_blueprint("""
version: 1
metadata: {name: deny-grafana}
entries:
  - model: group
    identifiers: {name: admins}
  - model: policy_binding
    identifiers: {application: grafana, group: admins}
""")
    await login(oidc["browser"], "/")
    response = await oidc["browser"].get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid"}))
    assert response.status_code == 403 and "location" not in response.headers
    assert "You are not allowed to use this application." in response.text
    # prompt=none cannot show a page: the client hears access_denied.
    response = await oidc["browser"].get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid",
        "prompt": "none", "state": "q"}))
    assert parse_qs(urlsplit(response.headers["location"]).query)["error"] == ["access_denied"]


async def test_key_rotation_publishes_before_signing(oidc: Any) -> None:
    from keystage.plugins.providers.oidc import keys

    kernel = oidc["kernel"]
    async with rp(oidc) as client:
        first = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="client_credentials")
    old_kid = kid_of(first["access_token"])
    new_kid = await keys.rotate(kernel, "RS256", publish_ahead=3600)
    await keys.keyring(kernel).refresh(force=True)
    kids = {k["kid"] for k in (await oidc["browser"].get("/oauth2/jwks")).json()["keys"]}
    assert {old_kid, new_kid} <= kids
    async with rp(oidc) as client:
        second = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="client_credentials")
    assert kid_of(second["access_token"]) == old_kid
    # Once the new key's time has come it signs; the old one stays published until its tokens expire.
    await kernel.pool.execute("UPDATE oidc_signing_keys SET signs_from = now() - interval '1 hour' WHERE kid = $1",
                              old_kid)
    await kernel.pool.execute("UPDATE oidc_signing_keys SET signs_from = now() - interval '1 second' WHERE kid = $1",
                              new_kid)
    await keys.keyring(kernel).refresh(force=True)
    async with rp(oidc) as client:
        third = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="client_credentials")
    assert kid_of(third["access_token"]) == new_kid
    kids = {k["kid"] for k in (await oidc["browser"].get("/oauth2/jwks")).json()["keys"]}
    assert old_kid in kids
    stored = await kernel.pool.fetchval("SELECT private_key FROM oidc_signing_keys WHERE kid = $1", new_kid)
    assert b"PRIVATE KEY" not in stored and b"\x30\x82" != stored[:2]


async def test_client_secret_is_stored_as_a_digest(oidc: Any) -> None:
    raw = await oidc["kernel"].pool.fetchval("SELECT config::text FROM providers WHERE name = 'grafana'")
    assert SECRET not in raw and hashlib.sha256(SECRET.encode()).hexdigest() in raw


async def code_tokens(env: dict[str, Any]) -> dict[str, Any]:
    verifier, challenge = pkce()
    code = (await authorize(env, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    response = await env["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        auth=("grafana", SECRET))
    return dict(response.json())


async def test_introspection_and_revocation(oidc: Any) -> None:
    browser = oidc["browser"]
    token = await code_tokens(oidc)

    async def introspect(value: str, auth: tuple[str, str] = ("grafana", SECRET)) -> dict[str, Any]:
        return dict((await browser.post("/oauth2/introspect", data={"token": value}, auth=auth)).json())

    access = await introspect(token["access_token"])
    assert access["active"] and access["sub"] == str(oidc["user"].id) and access["username"] == "alice"
    assert access["client_id"] == "grafana" and "openid" in access["scope"]
    assert (await introspect(token["refresh_token"]))["active"]
    assert await introspect("nonsense") == {"active": False}
    async with rp(oidc) as client:
        cc = await client.fetch_token(f"{BASE}/oauth2/token", grant_type="client_credentials")
    assert (await introspect(cc["access_token"]))["sub"] == "grafana"
    unauthenticated = await browser.post("/oauth2/introspect", data={"token": token["access_token"]})
    assert unauthenticated.status_code == 401
    # Revoking the refresh token ends the grant, its access token with it.
    revoked = await browser.post("/oauth2/revoke", data={"token": token["refresh_token"],
                                                         "token_type_hint": "refresh_token"}, auth=("grafana", SECRET))
    assert revoked.status_code == 200
    assert await introspect(token["access_token"]) == {"active": False}
    assert await introspect(token["refresh_token"]) == {"active": False}
    assert (await browser.post("/oauth2/revoke", data={"token": "unknown"}, auth=("grafana", SECRET))).status_code == 200


async def test_documented_grafana_example(oidc: Any, monkeypatch: pytest.MonkeyPatch, group_factory: Any) -> None:
    """docs/admin/oidc.md's Grafana blueprint applies and gives the claims Grafana's config reads."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "admin" / "oidc.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Example: Grafana"):]
    blueprint = section[section.index("```yaml") + len("```yaml"):section.index("```", section.index("```yaml") + 7)]
    monkeypatch.setenv("GRAFANA_CLIENT_SECRET", "g" * 48)
    await oidc["kernel"].pool.execute("DELETE FROM providers WHERE name = 'grafana'")
    await oidc["kernel"].pool.execute("DELETE FROM applications WHERE slug = 'grafana'")
    await apply_blueprint_to(oidc["kernel"], blueprint)
    admins = await oidc["kernel"].pool.fetchval("SELECT id FROM groups WHERE name = 'grafana-admins'")
    await oidc["kernel"].users.add_member(admins, oidc["user"].id)
    verifier, challenge = pkce()
    code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256"))["code"][0]
    token = (await oidc["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        auth=("grafana", "g" * 48))).json()
    info = (await oidc["browser"].get("/oauth2/userinfo",
                                      headers={"Authorization": f"Bearer {token['access_token']}"})).json()
    assert info["grafana_role"] == "Admin" and "grafana-admins" in info["groups"] and "staff" in info["groups"]
    assert info["preferred_username"] == "alice" and info["email"] == "alice@example.org"


async def test_token_endpoint_fast_path_answers_like_the_rest(oidc: Any) -> None:
    browser = oidc["browser"]
    ok = await browser.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("grafana", SECRET))
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"
    assert ok.headers["x-content-type-options"] == "nosniff" and ok.headers["x-request-id"]
    repeated = await browser.post("/oauth2/token", content=b"grant_type=client_credentials&grant_type=password",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"},
                                  auth=("grafana", SECRET))
    assert repeated.status_code == 400 and repeated.json()["error"] == "invalid_request"
    as_json = await browser.post("/oauth2/token", json={"grant_type": "client_credentials"}, auth=("grafana", SECRET))
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    unknown = await browser.post("/oauth2/token", data={"grant_type": "password", "username": "alice"},
                                 auth=("grafana", SECRET))
    assert unknown.json()["error"] == "unsupported_grant_type"
    basic = await browser.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x"))
    assert basic.status_code == 401 and basic.headers["www-authenticate"].startswith("Basic")
    assert (await browser.get("/oauth2/token")).status_code == 405


async def test_many_concurrent_token_requests_on_a_fresh_key_ring(oidc: Any) -> None:
    """More concurrent requests than pooled connections while the first signing key is created and
    the key ring refreshes: no request may wait for a second connection while holding one."""
    import asyncio

    async def one() -> int:
        response = await oidc["browser"].post("/oauth2/token", data={"grant_type": "client_credentials"},
                                              auth=("grafana", SECRET))
        return response.status_code

    statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), timeout=60)
    assert set(statuses) == {200}


async def test_opaque_client_credentials_quick_path_follows_changes(oidc: Any, apply_blueprint: Any) -> None:
    def service(secret: str) -> str:
        return f"""
version: 1
metadata: {{name: svc}}
entries:
  - model: provider
    identifiers: {{name: svc}}
    attrs:
      type: oidc
      config: {{client_id: svc, client_secret: {secret}, grant_types: [client_credentials],
               scopes: ["api:read"], access_token_format: opaque}}
"""
    first, second = "a" * 40, "b" * 40
    await apply_blueprint(service(first))
    browser = oidc["browser"]

    async def token(secret: str) -> httpx.Response:
        return await browser.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "api:read"},
                                  auth=("svc", secret))

    for _ in range(3):  # the second and third are answered in one statement
        response = await token(first)
        assert response.status_code == 200 and response.json()["access_token"].count(".") == 0
    introspected = (await browser.post("/oauth2/introspect", data={"token": response.json()["access_token"]},
                                       auth=("svc", first))).json()
    assert introspected["active"] and introspected["sub"] == "svc" and introspected["scope"] == "api:read"
    assert (await token(first[:-1] + "x")).status_code == 401
    await apply_blueprint(service(second))
    assert (await token(first)).status_code == 401
    assert (await token(second)).status_code == 200
    await oidc["kernel"].pool.execute("DELETE FROM providers WHERE name = 'svc'")
    assert (await token(second)).status_code == 401


async def test_policy_on_the_authorization_flow_is_not_skipped(oidc: Any, apply_blueprint: Any) -> None:
    """The consent-only shortcut is taken only when nothing is bound to the authorization flow."""
    await apply_blueprint("""
version: 1
metadata: {name: closed-authz}
entries:
  - model: policy
    identifiers: {name: closed}
    attrs: {type: static, config: {passing: false}}
  - model: policy_binding
    identifiers: {flow: default-provider-authorization-implicit-consent, policy: closed}
""")
    await login(oidc["browser"], "/")
    response = await oidc["browser"].get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid"}))
    assert response.status_code == 302 and response.headers["location"].startswith(
        "/flows/default-provider-authorization-implicit-consent/")
    flow_page = await oidc["browser"].get(response.headers["location"])
    assert flow_page.status_code == 403 and "code=" not in flow_page.headers.get("location", "")


async def test_rp_initiated_logout(oidc: Any) -> None:
    browser = oidc["browser"]
    kernel = oidc["kernel"]
    await apply_defaults(kernel)  # already applied: the invalidation flow exists
    token = await code_tokens(oidc)
    query = {"id_token_hint": token["id_token"], "post_logout_redirect_uri": "https://grafana.example.org/logged-out",
             "state": "bye"}
    response = await browser.get("/oauth2/end-session?" + urlencode(query))
    location = response.headers["location"]
    for _ in range(5):
        if not location.startswith("/"):
            break
        location = (await browser.get(location)).headers["location"]
    assert location == "https://grafana.example.org/logged-out?state=bye"
    assert (await browser.get("/")).headers["location"].startswith("/flows/default-authentication-flow/")
    # An unregistered address (or a forged return) ends on keystage's own page.
    await code_tokens(oidc)
    query["post_logout_redirect_uri"] = "https://evil.example.org/"
    location = (await browser.get("/oauth2/end-session?" + urlencode(query))).headers["location"]
    for _ in range(5):
        if not location.startswith("/flows/"):
            break
        location = (await browser.get(location)).headers["location"]
    assert location == "/oauth2/end-session/done"
    forged = await browser.get("/oauth2/end-session/done?to=eyJ0byI6Imh0dHBzOi8vZXZpbC5leGFtcGxlIn0.AAAA")
    assert forged.headers["location"] == "/"


async def test_cors_for_browser_apps(oidc: Any) -> None:
    browser = oidc["browser"]
    origin = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"}
    preflight = await browser.options("/oauth2/token", headers=origin)
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    token = await browser.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("grafana", SECRET),
                               headers={"Origin": "http://localhost:5173"})
    assert token.headers["access-control-allow-origin"] == "*"
    info = await browser.options("/oauth2/userinfo", headers={**origin, "Access-Control-Request-Method": "GET"})
    assert info.headers["access-control-allow-origin"] == "*"
    # Pages that use the session cookie get no CORS headers.
    page = await browser.get("/oauth2/authorize", headers={"Origin": "http://localhost:5173"})
    assert "access-control-allow-origin" not in page.headers


async def test_pushed_authorization_requests(oidc: Any, apply_blueprint: Any) -> None:
    browser = oidc["browser"]
    verifier, challenge = pkce()
    pushed = await browser.post("/oauth2/par", auth=("grafana", SECRET), data={
        "response_type": "code", "redirect_uri": REDIRECT, "scope": "openid email", "state": "p1",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    assert pushed.status_code == 201, pushed.text
    request_uri = pushed.json()["request_uri"]
    assert request_uri.startswith("urn:ietf:params:oauth:request_uri:") and pushed.json()["expires_in"] == 60
    # Another client cannot use it, and it is gone after one try.
    assert (await browser.get("/oauth2/authorize?" + urlencode({"client_id": "spa", "request_uri": request_uri}))
            ).status_code == 400
    pushed = await browser.post("/oauth2/par", auth=("grafana", SECRET), data={
        "response_type": "code", "redirect_uri": REDIRECT, "scope": "openid email", "state": "p2",
        "code_challenge": challenge, "code_challenge_method": "S256"})
    request_uri = pushed.json()["request_uri"]
    landed = await follow(browser, "/oauth2/authorize?" + urlencode({
        "client_id": "grafana", "request_uri": request_uri, "scope": "openid profile groups", "state": "tampered"}))
    answer = parse_qs(landed.query.decode())
    assert answer["state"] == ["p2"]  # the pushed parameters, not the ones on the URL
    token = (await browser.post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": answer["code"][0], "redirect_uri": REDIRECT,
        "code_verifier": verifier}, auth=("grafana", SECRET))).json()
    assert token["scope"] == "openid email"
    assert (await browser.get("/oauth2/authorize?" + urlencode({"client_id": "grafana", "request_uri": request_uri}))
            ).status_code == 400
    # Bad pushed requests are answered in JSON; a client may be required to push.
    bad = await browser.post("/oauth2/par", auth=("grafana", SECRET), data={
        "response_type": "code", "redirect_uri": REDIRECT + "x", "scope": "openid"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    assert (await browser.post("/oauth2/par", data={"response_type": "code"}, auth=("grafana", "wrong"))
            ).status_code == 401
    await oidc["kernel"].pool.execute(
        """UPDATE providers SET config = config || '{"require_pushed_authorization_requests": true}'::jsonb
           WHERE name = 'grafana'""")
    direct = await browser.get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid", "state": "d"}))
    assert parse_qs(urlsplit(direct.headers["location"]).query)["error"] == ["invalid_request"]


async def test_private_key_jwt_and_algorithm_confusion(oidc: Any, apply_blueprint: Any) -> None:
    import json as _json
    import time as _time

    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    public = key.as_dict(private=False)
    await apply_blueprint(f"""
version: 1
metadata: {{name: pkjwt}}
entries:
  - model: provider
    identifiers: {{name: pkjwt}}
    attrs:
      type: oidc
      config: {{client_id: pkjwt, jwks: {{keys: [{_json.dumps(public)}]}}, grant_types: [client_credentials],
               scopes: ["api:read"]}}
""")
    browser = oidc["browser"]
    audience = f"{BASE}/oauth2/token"

    def claims(**changes: Any) -> dict[str, Any]:
        now = int(_time.time())
        return {"iss": "pkjwt", "sub": "pkjwt", "aud": audience, "iat": now, "exp": now + 60,
                "jti": secrets.token_urlsafe(16), **changes}

    async def token(assertion: str) -> httpx.Response:
        return await browser.post("/oauth2/token", data={
            "grant_type": "client_credentials", "client_assertion": assertion,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})

    good = jwt.encode({"alg": "RS256", "kid": "k1"}, claims(), key)
    assert (await token(good)).status_code == 200
    assert (await token(good)).status_code == 401  # the same jti twice

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    none_header = b64(b'{"alg":"none"}')
    unsigned = f"{none_header}.{b64(_json.dumps(claims()).encode())}."
    assert (await token(unsigned)).status_code == 401
    # HS256 keyed with the client's public key, in the forms an attacker would try.
    import hmac as _hmac

    for secret in (_json.dumps(public).encode(), key.as_pem(private=False)):
        signing = b64(_json.dumps({"alg": "HS256", "kid": "k1"}).encode()) + "." + b64(_json.dumps(claims()).encode())
        forged = signing + "." + b64(_hmac.new(secret, signing.encode(), hashlib.sha256).digest())
        assert (await token(forged)).status_code == 401
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    for bad in (jwt.encode({"alg": "RS256", "kid": "k1"}, claims(), other),
                jwt.encode({"alg": "RS256", "kid": "k1"}, claims(aud="https://elsewhere.example"), key),
                jwt.encode({"alg": "RS256", "kid": "k1"}, claims(sub="grafana"), key),
                jwt.encode({"alg": "RS256", "kid": "k1"}, claims(exp=int(_time.time()) - 120), key),
                jwt.encode({"alg": "RS256", "kid": "k1"}, claims(exp=int(_time.time()) + 3600), key)):
        assert (await token(bad)).status_code == 401
    # A symmetric or private key cannot be registered as the client's jwks.
    with pytest.raises(Exception, match="public keys only"):
        await apply_blueprint("""
version: 1
metadata: {name: pkjwt-bad}
entries:
  - model: provider
    identifiers: {name: pkjwt-bad}
    attrs:
      type: oidc
      config: {client_id: pkjwt-bad, jwks: {keys: [{kty: oct, k: c2VjcmV0}]}, grant_types: [client_credentials]}
""")


async def test_expired_codes_and_tokens_are_purged(oidc: Any) -> None:
    from keystage.plugins.providers.oidc import cleanup

    await code_tokens(oidc)
    kernel = oidc["kernel"]
    await kernel.pool.execute("UPDATE oidc_tokens SET expires_at = now() - interval '2 days' WHERE kind = 'access'")
    await kernel.pool.execute("UPDATE oidc_codes SET expires_at = now() - interval '2 days'")
    assert await cleanup.purge(kernel) >= 2
    assert await kernel.pool.fetchval("SELECT count(*) FROM oidc_codes") == 0
    assert await kernel.pool.fetchval("SELECT count(*) FROM oidc_tokens WHERE kind = 'refresh'") == 1


def test_keys_rotate_cli(keystage_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from keystage.engine.cli import main

    for name, value in {"KEYSTAGE_DATABASE_URL": keystage_settings.database_url,
                        "KEYSTAGE_DATA_DIR": str(keystage_settings.data_dir),
                        "KEYSTAGE_APPLY_DEFAULT_BLUEPRINTS": "false"}.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    first = runner.invoke(main, ["keys", "rotate", "--alg", "ES256", "--publish-ahead", "0"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, ["keys", "rotate", "--alg", "ES256", "--publish-ahead", "600"])
    assert second.exit_code == 0 and "signs in 600 s" in second.output
    listed = runner.invoke(main, ["keys", "list"])
    assert listed.exit_code == 0 and listed.output.count("ES256") == 2 and "retires None" in listed.output


async def test_device_authorization_grant(oidc: Any) -> None:
    browser = oidc["browser"]
    device = (await browser.post("/oauth2/device", data={"scope": "openid profile offline_access"},
                                 auth=("grafana", SECRET))).json()
    assert device["verification_uri"] == f"{BASE}/device" and len(device["user_code"]) == 9
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": device["device_code"]}

    async def poll(client: tuple[str, str] | None = ("grafana", SECRET), **extra: str) -> httpx.Response:
        return await browser.post("/oauth2/token", data={**grant, **extra}, auth=client)

    assert (await poll()).json()["error"] == "authorization_pending"
    assert (await poll()).json()["error"] == "slow_down"
    # The user signs in on another screen and enters the code.
    page = await browser.get("/device?" + urlencode({"code": device["user_code"]}))
    assert page.status_code == 302
    await login(browser, "/device")
    page = await browser.get("/device")
    wrong = await browser.post("/device", data={"csrf_token": _csrf(page.text), "code": "BBBB-BBBB"})
    assert wrong.status_code == 400 and "This code is not valid or has expired." in wrong.text
    done = await browser.post("/device", data={"csrf_token": _csrf(page.text),
                                               "code": device["user_code"].lower().replace("-", " ")})
    assert done.status_code == 200 and "Your device is signed in." in done.text
    token = (await poll()).json()
    assert token["access_token"] and token["refresh_token"] and token["id_token"]
    assert (await poll()).json()["error"] == "invalid_grant"  # once
    # Another client's device code is not this client's; a denial reaches the device.
    other = (await browser.post("/oauth2/device", data={"scope": "openid", "client_id": "spa"})).json()
    assert (await browser.post("/oauth2/token", data={**grant, "device_code": other["device_code"]},
                               auth=("grafana", SECRET))).json()["error"] == "invalid_grant"
    page = await browser.get("/device")
    asked = await browser.post("/device", data={"csrf_token": _csrf(page.text), "code": other["user_code"]})
    assert asked.status_code == 302
    consent = await browser.get(asked.headers["location"])
    refused = await browser.post(asked.headers["location"].split("&restart")[0], data={
        "csrf_token": _csrf(consent.text), "component": "consent", "consent": "denied"})
    denied_page = await browser.get(refused.headers["location"])
    assert "The device was not allowed to sign in." in denied_page.text
    answer = await browser.post("/oauth2/token", data={**grant, "device_code": other["device_code"],
                                                       "client_id": "spa"})
    assert answer.json()["error"] == "access_denied"


def dpop_proof(key: Any, method: str, url: str, access_token: str | None = None, **changes: Any) -> str:
    import time as _time

    claims = {"htm": method, "htu": url, "iat": int(_time.time()), "jti": secrets.token_urlsafe(12), **changes}
    if access_token is not None:
        claims["ath"] = base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    return jwt.encode(header, claims, key, algorithms=["ES256"])


async def test_dpop_binds_tokens_to_the_clients_key(oidc: Any) -> None:
    from joserfc.jwk import ECKey

    browser = oidc["browser"]
    key, other = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    token_url, userinfo_url = f"{BASE}/oauth2/token", f"{BASE}/oauth2/userinfo"
    verifier, challenge = pkce()
    query = {"response_type": "code", "client_id": "spa", "redirect_uri": "http://localhost:5173/callback",
             "scope": "openid email offline_access", "state": "d", "code_challenge": challenge,
             "code_challenge_method": "S256"}
    landed = await follow(browser, "/oauth2/authorize?" + urlencode(query))
    code = parse_qs(landed.query.decode())["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "http://localhost:5173/callback",
            "code_verifier": verifier, "client_id": "spa"}
    bad = await browser.post("/oauth2/token", data=form,
                             headers={"DPoP": dpop_proof(key, "POST", "https://elsewhere.example/token")})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_dpop_proof"
    token = (await browser.post("/oauth2/token", data=form,
                                headers={"DPoP": dpop_proof(key, "POST", token_url)})).json()
    assert token["token_type"] == "DPoP", token
    access = token["access_token"]

    async def userinfo(scheme: str, proof: str | None) -> int:
        headers = {"Authorization": f"{scheme} {access}", **({"DPoP": proof} if proof else {})}
        return (await browser.get("/oauth2/userinfo", headers=headers)).status_code

    assert await userinfo("Bearer", None) == 401
    assert await userinfo("DPoP", None) == 401
    assert await userinfo("DPoP", dpop_proof(other, "GET", userinfo_url, access)) == 401
    assert await userinfo("DPoP", dpop_proof(key, "GET", userinfo_url)) == 401  # no ath
    proof = dpop_proof(key, "GET", userinfo_url, access)
    assert await userinfo("DPoP", proof) == 200
    assert await userinfo("DPoP", proof) == 401  # replayed
    # The refresh token is bound too (a public client): same key or nothing.
    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": "spa"}
    assert (await browser.post("/oauth2/token", data=refresh)).json()["error"] == "invalid_dpop_proof"
    assert (await browser.post("/oauth2/token", data=refresh, headers={"DPoP": dpop_proof(other, "POST", token_url)})
            ).json()["error"] == "invalid_dpop_proof"
    renewed = (await browser.post("/oauth2/token", data=refresh,
                                  headers={"DPoP": dpop_proof(key, "POST", token_url)})).json()
    assert renewed["token_type"] == "DPoP" and renewed["refresh_token"]
    # client_credentials: the JWT says which key (cnf.jkt), introspection too.
    cc = (await browser.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("grafana", SECRET),
                             headers={"DPoP": dpop_proof(key, "POST", token_url)})).json()
    keys = KeySet.import_key_set((await browser.get("/oauth2/jwks")).json())
    assert jwt.decode(cc["access_token"], keys).claims["cnf"] == {"jkt": key.thumbprint()}
    introspected = (await browser.post("/oauth2/introspect", data={"token": cc["access_token"]},
                                       auth=("grafana", SECRET))).json()
    assert introspected["cnf"] == {"jkt": key.thumbprint()} and introspected["token_type"] == "DPoP"


async def test_ui_locales_and_translated_pages(oidc: Any) -> None:
    browser = oidc["browser"]
    await login(browser, "/")
    query = {"response_type": "code", "client_id": "spa", "redirect_uri": "http://localhost:5173/callback",
             "scope": "openid email", "state": "l", "code_challenge": pkce()[1], "code_challenge_method": "S256",
             "ui_locales": "de-DE fr"}
    response = await browser.get("/oauth2/authorize?" + urlencode(query))
    consent = await browser.get(response.headers["location"])
    assert "The SPA möchte:" in consent.text and "Ihre E-Mail-Adresse sehen" in consent.text
    assert 'lang="de"' in consent.text
    bad = await browser.get("/oauth2/authorize?" + urlencode({"client_id": "nobody"}))
    assert bad.status_code == 400 and "Diese Anmeldeanfrage ist ungültig." in bad.text


async def test_prompt_login_and_max_age_force_a_new_sign_in(oidc: Any) -> None:
    browser = oidc["browser"]
    verifier, challenge = pkce()

    async def auth_time(**params: str) -> int:
        code = (await authorize(oidc, code_challenge=challenge, code_challenge_method="S256", **params))["code"][0]
        token = (await browser.post("/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier}, auth=("grafana", SECRET))
        ).json()  # redirect_uri may be left out: grafana has exactly one
        keys = KeySet.import_key_set((await browser.get("/oauth2/jwks")).json())
        return int(jwt.decode(token["id_token"], keys).claims["auth_time"])

    import asyncio

    first = await auth_time()
    await asyncio.sleep(1.1)
    assert await auth_time() == first  # the SSO session is reused
    await asyncio.sleep(1.1)
    again = await auth_time(prompt="login")
    assert again > first  # follow() had to sign in again
    await asyncio.sleep(1.1)
    assert await auth_time(max_age="3600") == again
    await asyncio.sleep(1.1)
    assert await auth_time(max_age="1") > again


async def test_login_hint_prefills_the_identification_stage(oidc: Any) -> None:
    browser = oidc["browser"]
    response = await browser.get("/oauth2/authorize?" + urlencode({
        "response_type": "code", "client_id": "grafana", "redirect_uri": REDIRECT, "scope": "openid",
        "state": "x", "login_hint": "alice@example.org"}))
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith("/flows/default-authentication-flow/")
    assert parse_qs(urlsplit(location).query)["login_hint"] == ["alice@example.org"]
    page = (await browser.get(location)).text
    assert 'value="alice@example.org"' in page and 'id="id_uid_field"' in page
    # A hint proves nothing: the password is still asked, and a control character is not echoed.
    challenge = (await browser.get("/api/v1/flows/default-authentication-flow/executor",
                                   params={"restart": "1", "login_hint": "bob\x00"})).json()
    assert challenge["component"] == "identification" and challenge["pending_identifier"] == ""
