"""Sessions and CSRF, against the real PostgreSQL and the real Redis, and through the Quart app."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import Quart, g

from keystage.engine import sessions
from keystage.engine.app import create_app
from keystage.engine.config import Settings
from keystage.engine.csrf import check_csrf, csrf_token
from keystage.engine.runtime import Keystage
from keystage.engine.sessions import COOKIE_NAME, Session, SessionManager, store_key
from keystage.engine.testing import opened_kernel


@pytest.fixture
def backend_settings(keystage_backend_settings: Settings) -> Settings:
    # Short lifetimes: what these tests leave in the shared Redis database goes away by itself.
    return dataclasses.replace(keystage_backend_settings, session_lifetime=60, remember_me_lifetime=120)


@pytest.fixture
async def kernel(backend_settings: Settings) -> AsyncIterator[Keystage]:
    async with opened_kernel(backend_settings) as runtime:
        yield runtime


@pytest.fixture
def manager(kernel: Keystage) -> SessionManager:
    return SessionManager(kernel)


def with_settings(kernel: Keystage, **changes: Any) -> SessionManager:
    """A manager on the same store with other lifetimes (below the minimum the config loader allows)."""
    shim = types.SimpleNamespace(settings=dataclasses.replace(kernel.settings, **changes), kv=kernel.kv)
    return SessionManager(shim)  # type: ignore[arg-type]


async def stored_keys(kernel: Keystage) -> list[str]:
    """Every session key in the store of ``kernel`` (for Redis: just the ones we look for)."""
    if kernel.redis is not None:
        return [k.decode() async for k in kernel.redis.scan_iter(match="keystage:session:*", count=1000)]
    return [r["key"] for r in await kernel.pool.fetch("SELECT key FROM kv WHERE key LIKE 'session:%'")]


async def test_fresh_session_is_not_stored(manager: SessionManager, kernel: Keystage) -> None:
    session = await manager.load(None)
    assert session.id is None and session.data == {} and not session.modified
    assert await manager.save(session) is None
    assert session.get("missing") is None  # reading does not make it worth saving
    assert await manager.save(session) is None
    session.pop("missing", None)
    assert await manager.save(session) is None
    session["x"] = 1
    del session["x"]
    assert session.modified
    assert await manager.save(session) is None  # touched but left empty: still nothing to store
    assert session.id is None
    if kernel.redis is None:
        assert await stored_keys(kernel) == []


async def test_save_and_load(manager: SessionManager) -> None:
    session = await manager.load(None)
    session["flow"] = {"plan": [1, 2], "ü": "ñ"}
    session.user_id = 7
    assert session.modified
    sid = await manager.save(session)
    assert sid is not None and sid == session.id and len(sid) == 43
    assert not session.modified
    loaded = await manager.load(sid)
    assert loaded.id == sid
    assert loaded.data == {"flow": {"plan": [1, 2], "ü": "ñ"}}
    assert loaded.user_id == 7 and loaded.remember is False
    assert not loaded.modified
    assert loaded.expires_at == pytest.approx(session.expires_at)
    assert await manager.save(loaded) is None  # unchanged and young: nothing to write or send
    await manager.destroy(loaded)


async def test_item_helpers_track_modification() -> None:
    session = Session()
    assert not session.modified
    session["a"] = 1
    assert session.modified and session["a"] == 1 and "a" in session
    session.modified = False
    assert session.pop("a") == 1 and session.modified
    session.modified = False
    assert session.pop("a", "default") == "default" and not session.modified
    with pytest.raises(KeyError):
        session.pop("a")
    session.remember = True
    assert session.modified


async def test_data_must_be_json(manager: SessionManager) -> None:
    session = Session()
    session["bad"] = {1, 2}
    with pytest.raises(TypeError):
        await manager.save(session)


LONG = "A" * 100_000


@pytest.mark.parametrize("cookie", [
    "", "garbage", "A" * 42, "A" * 44, LONG, "ü" * 43, "é" + "A" * 42, "A" * 42 + "\x00",
    "A" * 42 + "=", "../../etc/passwd", "session:" + "0" * 64,
])
async def test_bad_cookie_gives_an_empty_session(manager: SessionManager, cookie: str) -> None:
    session = await manager.load(cookie)
    assert session.id is None and session.data == {} and session.user_id is None


async def test_unknown_well_formed_cookie_gives_an_empty_session(manager: SessionManager) -> None:
    session = await manager.load("A" * 43)
    assert session.id is None and session.data == {}


@pytest.mark.parametrize("stored", [b"not json", b"\xff\xfe", b"[]", b"{}", b'{"d": [], "u": null, "r": false, "c": 0, "e": 9e99}',
                                    b'{"d": {}, "u": "admin", "r": false, "c": 0, "e": 9e99}',
                                    b'{"d": {}, "u": null, "r": false, "c": 0, "e": 1}'])
async def test_corrupt_stored_value_gives_an_empty_session(manager: SessionManager, kernel: Keystage, stored: bytes) -> None:
    sid = "B" * 43
    await kernel.kv.set(sessions.store_key(sid), stored, ttl=30)
    session = await manager.load(sid)
    assert session.id is None and session.data == {}
    await kernel.kv.delete(sessions.store_key(sid))


async def test_store_key_is_the_hash_of_the_id(manager: SessionManager, kernel: Keystage) -> None:
    session = Session()
    session["x"] = 1
    sid = await manager.save(session)
    assert sid is not None
    hashed = "session:" + hashlib.sha256(sid.encode()).hexdigest()
    keys = await stored_keys(kernel)
    if kernel.redis is not None:
        assert await kernel.redis.exists("keystage:" + hashed) == 1
        assert await kernel.redis.exists("keystage:session:" + sid) == 0
        assert sid.encode() not in await kernel.redis.get("keystage:" + hashed)
        assert not any(sid in k for k in keys)
    else:
        assert keys == [hashed]
        rows = await kernel.pool.fetch("SELECT key, value FROM kv")
        assert not any(sid in r["key"] or sid.encode() in r["value"] for r in rows)
    await manager.destroy(session)


async def test_store_ttl_follows_the_lifetime(manager: SessionManager, kernel: Keystage) -> None:
    session = Session()
    session["x"] = 1
    sid = await manager.save(session)
    assert sid is not None
    key = sessions.store_key(sid)
    if kernel.redis is not None:
        ttl = await kernel.redis.pttl("keystage:" + key) / 1000
    else:
        ttl = await kernel.pool.fetchval("SELECT extract(epoch FROM expires_at - now()) FROM kv WHERE key = $1", key)
    assert 55 < ttl <= 60
    session.remember = True
    await manager.save(session)
    if kernel.redis is not None:
        ttl = await kernel.redis.pttl("keystage:" + key) / 1000
    else:
        ttl = await kernel.pool.fetchval("SELECT extract(epoch FROM expires_at - now()) FROM kv WHERE key = $1", key)
    assert 115 < ttl <= 120
    await manager.destroy(session)


async def test_session_expires_after_its_lifetime(kernel: Keystage) -> None:
    short = with_settings(kernel, session_lifetime=1, remember_me_lifetime=60)
    plain, remembered = Session(), Session()
    plain["x"] = 1
    remembered["x"] = 2
    remembered.remember = True
    plain_id, remembered_id = await short.save(plain), await short.save(remembered)
    assert (await short.load(plain_id)).data == {"x": 1}
    await asyncio.sleep(1.2)
    assert (await short.load(plain_id)).id is None
    assert (await short.load(remembered_id)).data == {"x": 2}
    await short.destroy(remembered)


async def test_session_in_use_is_renewed_past_half_its_life(kernel: Keystage) -> None:
    short = with_settings(kernel, session_lifetime=2)
    session = Session()
    session["x"] = 1
    sid = await short.save(session)
    first_expiry = session.expires_at
    await asyncio.sleep(1.2)
    loaded = await short.load(sid)
    assert await short.save(loaded) == sid  # only read, but past half its life: renewed
    assert loaded.expires_at > first_expiry + 1
    assert await short.save(loaded) is None  # just renewed: no second write
    await asyncio.sleep(1.2)
    assert (await short.load(sid)).data == {"x": 1}  # alive 2.4 s after creation thanks to renewal
    await short.destroy(loaded)


async def test_rotate_changes_the_id(manager: SessionManager) -> None:
    session = Session()
    session["x"] = 1
    token = csrf_token(session)
    old = await manager.save(session)
    await manager.rotate(session)
    assert session.id != old and session.modified
    assert (await manager.load(old)).id is None
    new = await manager.save(session)
    assert new == session.id
    loaded = await manager.load(new)
    assert loaded.data == {"x": 1}  # the data survives, the pre-login CSRF token does not
    assert not check_csrf(loaded, token)
    assert csrf_token(loaded) != token
    await manager.destroy(loaded)


async def test_destroy(manager: SessionManager) -> None:
    session = Session()
    session["x"] = 1
    session.user_id = 3
    sid = await manager.save(session)
    await manager.destroy(session)
    assert session.id is None and session.data == {} and session.user_id is None and not session.modified
    assert (await manager.load(sid)).id is None
    assert await manager.save(session) is None


async def test_signed_in_sessions_are_remembered_and_readable_in_a_statement(manager: SessionManager,
                                                                             kernel: Keystage) -> None:
    session = Session()
    session.user_id = 7
    sid = await manager.save(session)
    assert manager.remembered(sid) == (7, session.created_at)
    assert manager.remembered("x" * 43) is None and manager.remembered(None) is None
    sql = manager.select_sql("$1")
    if kernel.settings.redis_url:  # Redis cannot be read inside a PostgreSQL statement: callers load
        assert sql is None
    else:
        raw = await kernel.pool.fetchval(f"SELECT {sql}", store_key(sid))
        assert manager.from_stored(sid, raw) == await manager.load(sid)
        assert await kernel.pool.fetchval(f"SELECT {sql}", store_key("y" * 43)) is None
    assert manager.from_stored(sid, None).id is None and manager.from_stored("bad", b"{}").id is None
    await manager.destroy(session)
    assert manager.remembered(sid) is None  # ended here: forgotten (elsewhere: the store says so)
    anonymous = Session()
    anonymous["x"] = 1
    assert manager.remembered(await manager.save(anonymous)) is None  # only signed-in sessions


async def test_cookie_kwargs(manager: SessionManager, kernel: Keystage) -> None:
    session = Session()
    kwargs = manager.cookie_kwargs(session)
    assert kwargs == {"httponly": True, "samesite": "Lax", "secure": False, "path": "/", "max_age": None}
    session.remember = True
    assert manager.cookie_kwargs(session)["max_age"] == kernel.settings.remember_me_lifetime == 120
    https = with_settings(kernel, external_url="https://id.example.com")
    assert https.cookie_kwargs(session)["secure"] is True


# CSRF


def test_csrf_token_is_created_once_and_checked() -> None:
    session = Session()
    assert not check_csrf(session, None)
    assert not check_csrf(session, "")
    assert not check_csrf(session, "anything")
    assert "_csrf" not in session and not session.modified  # checking never creates a token
    token = csrf_token(session)
    assert len(token) >= 32 and session["_csrf"] == token and session.modified
    assert csrf_token(session) == token
    assert check_csrf(session, token)
    assert not check_csrf(session, token[:-1])
    assert not check_csrf(session, token + "x")
    assert not check_csrf(session, "")
    assert not check_csrf(session, None)
    assert not check_csrf(session, "ü" * 43)
    assert not check_csrf(session, "\ud800")
    assert csrf_token(Session()) != token


# Through the app


def add_routes(app: Quart) -> None:
    @app.get("/test/touch")
    async def touch() -> str:
        g.session["visits"] = g.session.get("visits", 0) + 1
        return str(g.session["visits"])

    @app.get("/test/read")
    async def read() -> str:
        return str(g.session.get("visits"))

    @app.get("/test/remember")
    async def remember() -> str:
        g.session.remember = True
        return "ok"

    @app.get("/test/logout")
    async def logout() -> str:
        await app.extensions["keystage_sessions"].destroy(g.session)
        return "bye"


def set_cookie_headers(response: Any) -> list[str]:
    return response.headers.getlist("Set-Cookie")


async def test_app_sessions(keystage_app: Quart, keystage_client: Any) -> None:
    sessions.install(keystage_app)
    sessions.install(keystage_app)  # idempotent, so create_app may install it as well
    add_routes(keystage_app)

    health = await keystage_client.get("/-/health/live/")
    assert health.status_code == 200
    assert set_cookie_headers(health) == []

    read = await keystage_client.get("/test/read")
    assert await read.get_data(as_text=True) == "None"
    assert set_cookie_headers(read) == []

    first = await keystage_client.get("/test/touch")
    [cookie] = set_cookie_headers(first)
    assert cookie.startswith(COOKIE_NAME + "=")
    attributes = [part.strip().lower() for part in cookie.split(";")[1:]]
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # http external URL
    assert not any(a.startswith(("max-age", "expires")) for a in attributes)  # a browser-session cookie
    assert "Cookie" in first.headers.get("Vary", "")

    second = await keystage_client.get("/test/touch")
    assert await second.get_data(as_text=True) == "2"
    [again] = set_cookie_headers(second)
    assert again.split(";")[0] == cookie.split(";")[0]  # same id, no new session

    unchanged = await keystage_client.get("/test/read")
    assert await unchanged.get_data(as_text=True) == "2"
    assert set_cookie_headers(unchanged) == []

    remembered = await keystage_client.get("/test/remember")
    [persistent] = set_cookie_headers(remembered)
    assert f"max-age={keystage_app.extensions['keystage'].settings.remember_me_lifetime}" in persistent.lower()

    bye = await keystage_client.get("/test/logout")
    [deleted] = set_cookie_headers(bye)
    assert deleted.startswith(COOKIE_NAME + "=;") or deleted.startswith(COOKIE_NAME + '="";')
    assert "max-age=0" in deleted.lower()
    after = await keystage_client.get("/test/read")
    assert await after.get_data(as_text=True) == "None"


async def test_app_garbage_cookie_is_dropped(keystage_app: Quart) -> None:
    sessions.install(keystage_app)
    add_routes(keystage_app)
    client = keystage_app.test_client()
    response = await client.get("/test/read", headers={"Cookie": f"{COOKIE_NAME}=" + "ü%00" * 2000})
    assert response.status_code == 200
    assert await response.get_data(as_text=True) == "None"
    [deleted] = set_cookie_headers(response)
    assert "max-age=0" in deleted.lower()


async def test_app_secure_cookie_behind_https(keystage_settings: Settings) -> None:
    app = create_app(dataclasses.replace(keystage_settings, external_url="https://id.example.com"))
    async with app.test_app():
        sessions.install(app)
        add_routes(app)
        response = await app.test_client().get("/test/touch")
        [cookie] = set_cookie_headers(response)
        assert "secure" in [part.strip().lower() for part in cookie.split(";")]
