"""The OIDC hot paths served before Quart (plugins/providers/oidc/fastpath.py, decision.py) and the code
grant that redeems and stores in one statement: they must answer exactly what the Quart routes and the
ordinary path would, and hand everything else over. Real PostgreSQL; the app in-process behind httpx
(the ASGI app with its fast paths installed, as `keystage serve` runs it)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from keystage.engine.blueprints import apply_defaults
from keystage.engine.sessions import COOKIE_NAME, store_key
from keystage.engine.testing import apply_blueprint_to, kernel_of, sign_in

BASE = "http://127.0.0.1:9000"
PASSWORD = "correct horse battery staple"
REDIRECT = "http://localhost:5173/callback"
SERVICE_SECRET = "service-secret-0123456789-abcdefghij"

BLUEPRINT = f"""
version: 1
metadata: {{name: oidc-fastpaths}}
entries:
  - model: provider
    identifiers: {{name: spa}}
    attrs:
      type: oidc
      config:
        client_id: spa
        client_type: public
        redirect_uris: ["{REDIRECT}"]
        grant_types: [authorization_code, refresh_token]
        scopes: [openid, profile, offline_access]
        authorization_flow: default-provider-authorization-implicit-consent
        access_token_format: opaque
  - model: application
    identifiers: {{slug: spa}}
    attrs: {{name: The SPA, provider: spa}}
  - model: provider
    identifiers: {{name: other}}
    attrs:
      type: oidc
      config:
        client_id: other
        client_type: public
        redirect_uris: ["{REDIRECT}"]
        authorization_flow: default-provider-authorization-implicit-consent
  - model: application
    identifiers: {{slug: other}}
    attrs: {{name: Other, provider: other}}
  - model: provider
    identifiers: {{name: service}}
    attrs:
      type: oidc
      config:
        client_id: service
        client_secret: {SERVICE_SECRET}
        grant_types: [client_credentials]
        scopes: ["api:read"]
"""


@pytest.fixture
async def env(keystage_app: Any, user_factory: Any) -> Any:
    kernel = kernel_of(keystage_app)
    await apply_defaults(kernel)
    await apply_blueprint_to(kernel, BLUEPRINT)
    user = await user_factory("alice", password=PASSWORD)
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=keystage_app), base_url=BASE)
    await sign_in(browser, "/", "alice", PASSWORD)
    yield {"kernel": kernel, "user": user, "browser": browser}
    await browser.aclose()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


def authorize_url(client_id: str = "spa", challenge: str | None = None, **extra: str) -> str:
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
             "scope": "openid profile offline_access", "state": "st-1", "nonce": "n-1",
             "code_challenge": challenge or pkce()[1], "code_challenge_method": "S256", **extra}
    return "/oauth2/authorize?" + urlencode(query)


def query_of(response: httpx.Response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(response.headers["location"]).query)


async def stored_session(env: Any) -> bytes | None:
    return await env["kernel"].kv.get(store_key(env["browser"].cookies[COOKIE_NAME]))


async def exchange(env: Any, code: str, verifier: str, client_id: str = "spa", **extra: str) -> httpx.Response:
    return await env["browser"].post("/oauth2/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier,
        "client_id": client_id, **extra})


async def live(env: Any, access_token: str) -> bool:
    info = await env["browser"].get("/oauth2/userinfo", headers={"Authorization": f"Bearer {access_token}"})
    return info.status_code == 200


async def test_signed_in_authorization_is_answered_at_once_without_a_session_write(env: Any) -> None:
    before = await stored_session(env)
    verifier, challenge = pkce()
    response = await env["browser"].get(authorize_url(challenge=challenge), headers={"X-Request-Id": "rp-42"})
    assert response.status_code == 302
    # Served by the fast path: no body, not cacheable, the headers every keystage answer has.
    assert response.headers["content-length"] == "0" and response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in \
        response.headers["content-security-policy"]
    assert response.headers["x-request-id"] == "rp-42"
    assert "set-cookie" not in response.headers
    assert await stored_session(env) == before
    params = query_of(response)
    assert params["state"] == ["st-1"] and params["iss"] == [BASE]
    assert response.headers["location"].startswith(REDIRECT + "?")
    token = await exchange(env, params["code"][0], verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert {"access_token", "id_token", "refresh_token"} <= body.keys()
    assert await live(env, body["access_token"])


@pytest.mark.parametrize("extra", [{"prompt": "login"}, {"max_age": "0"}, {"ui_locales": "de"}, {"locale": "de"}])
async def test_what_the_fast_path_leaves_to_the_route(env: Any, extra: dict[str, str]) -> None:
    response = await env["browser"].get(authorize_url(**extra))
    assert response.status_code == 302
    if "prompt" in extra or "max_age" in extra:  # sign in again, through the authentication flow
        assert response.headers["location"].startswith("/flows/default-authentication-flow/")
    else:  # the language is remembered (a session write), then the code
        assert "code" in query_of(response)
        assert "de" in (await stored_session(env) or b"").decode()


async def test_repeated_parameters_and_bad_requests_are_the_routes_to_answer(env: Any) -> None:
    url = authorize_url() + "&client_id=other"
    response = await env["browser"].get(url)
    # The route reads the first value (Quart's request.args), like every other keystage form.
    assert response.status_code == 302 and "code" in query_of(response)
    response = await env["browser"].get(authorize_url(redirect_uri="http://localhost:5173/callback/../evil"))
    assert response.status_code == 400 and "location" not in response.headers
    response = await env["browser"].get(authorize_url(code_challenge_method="plain"))
    assert query_of(response)["error"] == ["invalid_request"]
    response = await env["browser"].get(authorize_url(client_id="nobody"))
    assert response.status_code == 400 and "location" not in response.headers


async def codes(env: Any) -> int:
    return int(await env["kernel"].pool.fetchval("SELECT count(*) FROM oidc_codes"))


async def test_the_code_is_stored_with_the_context_read(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from keystage.plugins.providers.oidc import tokens

    assert "code" in query_of(await env["browser"].get(authorize_url()))  # the process now knows the client
    created = []
    original = tokens.create_code

    async def counting(*args: Any, **kwargs: Any) -> str:
        created.append(kwargs)
        return await original(*args, **kwargs)

    monkeypatch.setattr(tokens, "create_code", counting)
    verifier, challenge = pkce()
    for prompt in ("", "none", "consent"):
        response = await env["browser"].get(authorize_url(challenge=challenge, **({"prompt": prompt} if prompt else {})))
        assert "code" in query_of(response)
    assert created == [] and await codes(env) == 4  # one statement each, nothing stored twice
    assert (await exchange(env, query_of(response)["code"][0], verifier)).status_code == 200
    # A changed config is not trusted: the request is checked again and the code made the ordinary way.
    await env["kernel"].pool.execute(
        """UPDATE providers SET config = config::jsonb || '{"code_lifetime": 30}' WHERE name = 'spa'""")
    assert "code" in query_of(await env["browser"].get(authorize_url()))
    assert len(created) == 1 and await codes(env) == 5
    row = await env["kernel"].pool.fetchrow(
        "SELECT expires_at - created_at AS life FROM oidc_codes ORDER BY created_at DESC LIMIT 1")
    assert row["life"].total_seconds() <= 31


async def test_no_code_for_a_deactivated_user_or_a_forged_cookie(env: Any) -> None:
    assert "code" in query_of(await env["browser"].get(authorize_url()))
    await env["kernel"].pool.execute("UPDATE users SET is_active = false WHERE id = $1", env["user"].id)
    response = await env["browser"].get(authorize_url())
    assert response.status_code == 302 and "code=" not in response.headers["location"]
    assert await codes(env) == 1
    assert response.headers["location"].startswith("/flows/default-authentication-flow/")
    stranger = httpx.AsyncClient(transport=env["browser"]._transport, base_url=BASE,
                                 cookies={COOKIE_NAME: secrets.token_urlsafe(32)})
    async with stranger:
        response = await stranger.get(authorize_url())
        assert "code=" not in response.headers["location"]


async def test_application_policy_is_checked_on_the_fast_path(env: Any) -> None:
    assert "code" in query_of(await env["browser"].get(authorize_url()))
    await apply_blueprint_to(env["kernel"], """
version: 1
metadata: {name: spa-admins-only}
entries:
  - model: group
    identifiers: {name: admins}
  - model: policy_binding
    identifiers: {application: spa, group: admins}
""")
    response = await env["browser"].get(authorize_url())
    assert response.status_code == 403 and "location" not in response.headers
    response = await env["browser"].get(authorize_url(prompt="none"))
    assert query_of(response)["error"] == ["access_denied"]
    assert await codes(env) == 1
    await env["kernel"].pool.execute(
        "INSERT INTO group_memberships (user_id, group_id) SELECT $1, id FROM groups WHERE name = 'admins'", env["user"].id)
    response = await env["browser"].get(authorize_url())
    assert "code" in query_of(response)


async def test_explicit_consent_still_asks(env: Any) -> None:
    assert "code" in query_of(await env["browser"].get(authorize_url()))
    await env["kernel"].pool.execute(
        """UPDATE providers SET config = jsonb_set(config::jsonb, '{authorization_flow}',
                                                   '"default-provider-authorization-explicit-consent"')
           WHERE name = 'spa'""")
    response = await env["browser"].get(authorize_url())
    assert response.headers["location"].startswith("/flows/default-provider-authorization-explicit-consent/")
    response = await env["browser"].get(authorize_url(prompt="none"))
    assert query_of(response)["error"] == ["consent_required"]
    assert await codes(env) == 1


async def test_code_replay_through_the_one_statement_grant_revokes(env: Any) -> None:
    verifier, challenge = pkce()
    code = query_of(await env["browser"].get(authorize_url(challenge=challenge)))["code"][0]
    first = (await exchange(env, code, verifier)).json()
    assert await live(env, first["access_token"])
    again = await exchange(env, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert not await live(env, first["access_token"])
    refresh = await env["browser"].post("/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "spa"})
    assert refresh.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("case", ["wrong verifier", "no verifier", "malformed verifier", "other redirect",
                                  "other client", "expired"])
async def test_a_bad_exchange_stores_nothing(env: Any, case: str) -> None:
    kernel = env["kernel"]
    verifier, challenge = pkce()
    if case == "malformed verifier":  # a challenge made from a verifier RFC 7636 does not allow
        verifier = "short"
        challenge = create_s256_code_challenge(verifier)
    code = query_of(await env["browser"].get(authorize_url(challenge=challenge)))["code"][0]
    await exchange(env, "warm-up-" + code, verifier)  # the client is now one this process has read
    extra: dict[str, str] = {}
    client_id = "spa"
    if case == "wrong verifier":
        verifier = pkce()[0]
    elif case == "no verifier":
        verifier = ""
    elif case == "other redirect":
        extra["redirect_uri"] = REDIRECT + "/x"
    elif case == "other client":
        client_id = "other"
    elif case == "expired":
        await kernel.pool.execute("UPDATE oidc_codes SET expires_at = now() - interval '1 second'")
    tokens_before = await kernel.pool.fetchval("SELECT count(*) FROM oidc_tokens")
    response = await exchange(env, code, verifier, client_id, **extra)
    assert response.status_code == 400 and response.json()["error"] in ("invalid_grant", "invalid_request")
    assert await kernel.pool.fetchval("SELECT count(*) FROM oidc_tokens") == tokens_before
    # The code is spent either way: trying again with everything right gives nothing either.
    if case not in ("other client", "malformed verifier"):
        retry = await exchange(env, code, pkce()[0] if case == "no verifier" else verifier)
        assert retry.json()["error"] == "invalid_grant"
        assert await kernel.pool.fetchval("SELECT count(*) FROM oidc_tokens") == tokens_before


async def test_a_changed_client_takes_the_ordinary_path(env: Any) -> None:
    kernel = env["kernel"]
    verifier, challenge = pkce()
    code = query_of(await env["browser"].get(authorize_url(challenge=challenge)))["code"][0]
    # The admin makes the client confidential after this process read it: the one-statement grant must
    # not trust what it remembers, and the ordinary path now wants a secret.
    await kernel.pool.execute(
        """UPDATE providers SET config = config::jsonb || jsonb_build_object(
               'client_type', 'confidential', 'client_secret_hash', encode(sha256('a-secret'::bytea), 'hex'))
           WHERE name = 'spa'""")
    response = await exchange(env, code, verifier)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert await kernel.pool.fetchval("SELECT used_at FROM oidc_codes") is None


async def test_the_refresh_token_only_with_offline_access(env: Any) -> None:
    verifier, challenge = pkce()
    code = query_of(await env["browser"].get(authorize_url(challenge=challenge, scope="openid profile")))["code"][0]
    body = (await exchange(env, code, verifier)).json()
    assert "refresh_token" not in body and await live(env, body["access_token"])
    kinds = await env["kernel"].pool.fetch("SELECT kind FROM oidc_tokens")
    assert [r["kind"] for r in kinds] == ["access"]


async def held(env: Any, column: str, value: int) -> int:
    pool = env["kernel"].pool
    return int(await pool.fetchval(f"SELECT count(*) FROM oidc_codes WHERE {column} = $1", value)
               + await pool.fetchval(f"SELECT count(*) FROM oidc_tokens WHERE {column} = $1", value))


@pytest.mark.parametrize("table", ["users", "providers"])
async def test_deleting_a_user_or_a_provider_deletes_their_codes_and_tokens(env: Any, table: str) -> None:
    # Codes and tokens carry no foreign keys (inserts would lock the user's and the client's row);
    # the triggers of migration 0004 do what ON DELETE CASCADE did.
    kernel = env["kernel"]
    verifier, challenge = pkce()
    code = query_of(await env["browser"].get(authorize_url(challenge=challenge)))["code"][0]
    assert (await exchange(env, code, verifier)).status_code == 200
    query_of(await env["browser"].get(authorize_url()))  # a code not exchanged
    other = await kernel.pool.fetchval("SELECT id FROM providers WHERE name = 'other'")
    query_of(await env["browser"].get(authorize_url(client_id="other")))  # another client's code
    column, value = ("user_id", env["user"].id) if table == "users" else \
        ("provider_id", await kernel.pool.fetchval("SELECT id FROM providers WHERE name = 'spa'"))
    # The user's: three codes, an access and a refresh token; the client's: all but the other's code.
    assert await held(env, column, value) == (5 if table == "users" else 4)
    await kernel.pool.execute(f"DELETE FROM {table} WHERE id = $1", value)
    assert await held(env, column, value) == 0
    assert await held(env, "provider_id", other) == (0 if table == "users" else 1)


async def test_codes_and_tokens_whose_user_is_gone_are_worthless(env: Any) -> None:
    # A sign-in racing the user's deletion can leave a code or token behind (no foreign key stops the
    # insert): nothing that reads one without its user may accept it.
    kernel = env["kernel"]
    verifier, challenge = pkce()
    code = query_of(await env["browser"].get(authorize_url(challenge=challenge)))["code"][0]
    first = (await exchange(env, code, verifier)).json()
    verifier, challenge = pkce()
    pending = query_of(await env["browser"].get(authorize_url(challenge=challenge)))["code"][0]
    async with kernel.pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE users DISABLE TRIGGER oidc_forget_users")
        await conn.execute("DELETE FROM users WHERE id = $1", env["user"].id)
        await conn.execute("ALTER TABLE users ENABLE TRIGGER oidc_forget_users")
    assert await held(env, "user_id", env["user"].id) == 4
    assert not await live(env, first["access_token"])
    refreshed = await env["browser"].post("/oauth2/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "spa"})
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    exchanged = await exchange(env, pending, verifier)
    assert exchanged.status_code == 400 and exchanged.json()["error"] == "invalid_grant"
    from keystage.plugins.providers.oidc.tokens import find_token  # what introspection and revocation read

    for token in (first["access_token"], first["refresh_token"]):
        assert await find_token(kernel, token, BASE, kinds=("access", "refresh")) is None
    assert await kernel.pool.fetchval("SELECT count(*) FROM oidc_tokens WHERE kind = 'access'") == 1


async def test_a_session_this_process_knows_is_read_with_the_context(env: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = env["kernel"]
    reads = []
    original = type(kernel.kv).get

    async def counting(self: Any, key: str) -> bytes | None:
        reads.append(key)
        return await original(self, key)

    monkeypatch.setattr(type(kernel.kv), "get", counting)
    verifier, challenge = pkce()
    response = await env["browser"].get(authorize_url(challenge=challenge))
    assert "code" in query_of(response) and reads == []  # one statement: session, client, user, code
    assert (await exchange(env, query_of(response)["code"][0], verifier)).status_code == 200


async def test_a_remembered_session_that_ended_elsewhere_gets_no_code(env: Any) -> None:
    # Another worker logged the browser out (or an admin ended the session): this process still
    # remembers it, the row is gone. No code may be stored or sent; the route sends the browser to sign in.
    kernel = env["kernel"]
    assert "code" in query_of(await env["browser"].get(authorize_url()))
    await kernel.kv.delete(store_key(env["browser"].cookies[COOKIE_NAME]))
    response = await env["browser"].get(authorize_url())
    assert response.status_code == 302 and "code=" not in response.headers["location"]
    assert response.headers["location"].startswith("/flows/default-authentication-flow/")
    assert await codes(env) == 1


async def test_a_remembered_session_that_now_holds_another_user_answers_for_that_user(
        env: Any, user_factory: Any) -> None:
    import json

    kernel = env["kernel"]
    assert "code" in query_of(await env["browser"].get(authorize_url()))  # client and session now known
    bob = await user_factory("bob", password=PASSWORD)
    key = store_key(env["browser"].cookies[COOKIE_NAME])
    stored = json.loads(await kernel.kv.get(key))
    await kernel.kv.set(key, json.dumps({**stored, "u": bob.id}).encode(), ttl=600)
    verifier, challenge = pkce()
    response = await env["browser"].get(authorize_url(challenge=challenge))
    body = (await exchange(env, query_of(response)["code"][0], verifier)).json()
    userinfo = await env["browser"].get("/oauth2/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    # The code made on the guess (alice) may be stored with the context, but is never sent: it expires.
    assert userinfo.json()["preferred_username"] == "bob"


async def service_token(env: Any, secret: str = SERVICE_SECRET, **form: str) -> httpx.Response:
    return await env["browser"].post("/oauth2/token", data={"grant_type": "client_credentials", **form},
                                     auth=("service", secret))


async def announced(kernel: Any, mark: int | None) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 10
    while kernel.changes.fresh(mark):
        assert time.monotonic() < deadline, "the change was never announced"
        await asyncio.sleep(0.02)


async def test_a_known_client_gets_its_jwt_without_a_query(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = env["kernel"]
    assert kernel.changes.live  # the app listens for configuration changes from its start
    first = await service_token(env)
    assert first.status_code == 200 and first.json()["access_token"].count(".") == 2
    queries = []
    original = type(kernel.pool).fetchrow

    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        queries.append(args[0])
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(type(kernel.pool), "fetchrow", counting)
    second = await service_token(env, scope="api:read")
    assert second.status_code == 200 and second.json()["scope"] == "api:read" and queries == []
    # What the ordinary path refuses, the quick one does not grant (nor does it answer: the route does).
    assert (await service_token(env, "wrong-secret")).status_code == 401
    assert (await service_token(env, scope="openid")).json()["error"] == "invalid_scope"
    assert (await service_token(env, client_secret=SERVICE_SECRET)).json()["error"] == "invalid_request"


@pytest.mark.parametrize("change", ["secret", "grant", "deleted"])
async def test_a_changed_client_is_read_again_once_the_change_is_announced(env: Any, change: str) -> None:
    kernel = env["kernel"]
    assert (await service_token(env)).status_code == 200
    mark = tokens_client_mark(kernel, "service")
    assert kernel.changes.fresh(mark)
    if change == "secret":
        await kernel.pool.execute("""UPDATE providers SET config = config || jsonb_build_object(
                                         'client_secret_hash', encode(sha256('rotated'::bytea), 'hex'))
                                     WHERE name = 'service'""")
    elif change == "grant":
        await kernel.pool.execute("""UPDATE providers SET config = config || jsonb_build_object(
                                         'grant_types', jsonb_build_array('urn:ietf:params:oauth:grant-type:device_code'))
                                     WHERE name = 'service'""")
    else:
        await kernel.pool.execute("DELETE FROM providers WHERE name = 'service'")
    await announced(kernel, mark)
    response = await service_token(env)
    expected = {"secret": (401, "invalid_client"), "grant": (400, "unauthorized_client"),
                "deleted": (401, "invalid_client")}[change]
    assert (response.status_code, response.json()["error"]) == expected


async def test_without_a_listener_every_request_reads_the_client(env: Any) -> None:
    # Announcements not heard (the listener is down): a change takes effect at the next request.
    kernel = env["kernel"]
    assert (await service_token(env)).status_code == 200
    await kernel.changes.close()
    assert not kernel.changes.live
    await kernel.pool.execute("DELETE FROM providers WHERE name = 'service'")
    response = await service_token(env)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def tokens_client_mark(kernel: Any, client_id: str) -> int | None:
    from keystage.plugins.providers.oidc import tokens

    client = tokens.remembered_client(kernel, client_id)
    assert client is not None
    return client.mark
