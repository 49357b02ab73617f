"""Flows across real ``keystage serve`` processes: plans and sessions live in the store, not in a worker.

Each test gets its own database on the test kit's server (``KEYSTAGE_TEST_DATABASE_URL``, or the
embedded PostgreSQL), prepared in this process (migrations,
the shipped default blueprints, a user) and dropped afterwards. The servers are the real
console script, one worker each, on free ports; several are started in parallel.

httpx keeps cookies per host, not per port, so one client with one cookie jar talks to every
server on 127.0.0.1 exactly like a browser behind a load balancer without sticky sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from keystage.engine.sessions import COOKIE_NAME, store_key
from keystage.engine.testing import base_settings, free_port, fresh_database

KEYSTAGE = Path(sys.executable).parent / "keystage"
FLOW = "default-authentication-flow"
EXECUTOR = f"/api/v1/flows/{FLOW}/executor"
USERNAME = "alice"
PASSWORD = "correct horse battery staple"
READY_TIMEOUT = 40.0
STOP_TIMEOUT = 20.0
SIGNED_IN = f"You are signed in as {USERNAME}."


# -- database -------------------------------------------------------------------------


async def _prepare(database_url: str, data_dir: Path) -> None:
    """Migrate, apply the shipped default blueprints, create the user.

    ``apply_defaults`` records what it applied, so a server that applies the defaults at
    startup itself finds nothing left to do.
    """
    from keystage.engine.blueprints import apply_defaults
    from keystage.engine.runtime import Keystage

    kernel = Keystage(base_settings(database_url, data_dir))
    await kernel.open(migrate=True)
    try:
        await apply_defaults(kernel)
        await kernel.users.create(USERNAME, password=PASSWORD)
    finally:
        await kernel.close()


@pytest.fixture
def database_url(tmp_path: Path, keystage_server_url: str) -> Iterator[str]:
    # The test kit's server: KEYSTAGE_TEST_DATABASE_URL, or the embedded one on a bare machine.
    with fresh_database(keystage_server_url, prefix="keystage_fp") as url:
        asyncio.run(_prepare(url, tmp_path / "prepare"))
        yield url


async def _fetchval(database_url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def pg_has_session(database_url: str, cookie: str) -> bool:
    return bool(asyncio.run(_fetchval(
        database_url, "SELECT EXISTS (SELECT 1 FROM kv WHERE key = $1 AND expires_at > now())", store_key(cookie))))


def redis_has_session(redis_url: str, cookie: str) -> bool:
    import redis

    from keystage.engine.kv import REDIS_PREFIX

    client = redis.Redis.from_url(redis_url)
    try:
        return bool(client.exists(REDIS_PREFIX + store_key(cookie)))
    finally:
        client.close()


# -- servers --------------------------------------------------------------------------




class Server:
    """``keystage serve --workers 1`` in its own process group, logging to a file."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{name}-{self.port}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(KEYSTAGE), "serve", "--listen", f"127.0.0.1:{self.port}", "--workers", "1"],
            env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def poll_ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"server {self.name} exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(self.base + "/-/health/ready/", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait: a clean stop, as an admin's restart does."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"server {self.name} did not stop {STOP_TIMEOUT} s after SIGTERM:\n{self.output()}")
        self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def wait_ready(*servers: Server) -> None:
    pending = list(servers)
    deadline = time.monotonic() + READY_TIMEOUT
    while pending and time.monotonic() < deadline:
        pending = [s for s in pending if not s.poll_ready()]
        if pending:
            time.sleep(0.05)
    if pending:
        pytest.fail("not ready after %s s: %s\n%s" % (
            READY_TIMEOUT, [s.name for s in pending], "\n".join(s.output() for s in pending)))


@pytest.fixture
def start_servers(tmp_path: Path) -> Iterator[Any]:
    """``start_servers(env, "a", "b", port=...)`` starts the servers in parallel and waits for all of them."""
    started: list[Server] = []

    def start(env: dict[str, str], *names: str, port: int | None = None) -> list[Server]:
        servers = [Server(name, tmp_path, env, port) for name in names]
        started.extend(servers)
        wait_ready(*servers)
        return servers

    try:
        yield start
    finally:
        for server in started:
            server.kill()
        bad = [s for s in started if "Traceback" in s.output()]
        assert not bad, "\n".join(f"--- {s.name}\n{s.output()}" for s in bad)


def server_env(tmp_path: Path, database_url: str, secret_key: str, redis_url: str | None = None) -> dict[str, str]:
    """The inherited environment without KEYSTAGE_* settings, plus one database (and maybe Redis).

    Every process of one deployment shares the secret key, as an admin configures it; each has
    its own data directory (they share nothing on disk, as on separate hosts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSTAGE_", "_KEYSTAGE_"))}
    env.update({
        "KEYSTAGE_DATABASE_URL": database_url,
        "KEYSTAGE_DATA_DIR": str(tmp_path / f"data-{secrets.token_hex(3)}"),
        "KEYSTAGE_SECRET_KEY": secret_key,
    })
    if redis_url:
        env["KEYSTAGE_REDIS_URL"] = redis_url
    return env


# -- the JSON face ----------------------------------------------------------------------


def call(client: httpx.Client, server: Server, response: dict[str, Any] | None = None,
         path: str = EXECUTOR + "?next=/") -> dict[str, Any]:
    url = server.base + path
    r = client.get(url) if response is None else client.post(url, json=response)
    assert r.status_code == 200, (server.name, r.status_code, r.text, server.output())
    body: dict[str, Any] = r.json()
    return body


def expect(challenge: dict[str, Any], component: str, server: Server) -> None:
    assert challenge.get("component") == component, (server.name, json.dumps(challenge), server.output())
    assert not challenge.get("response_errors"), challenge
    assert "messages" not in challenge, challenge  # e.g. "Your session expired": the plan was lost


def assert_signed_in(client: httpx.Client, server: Server) -> None:
    r = client.get(server.base + "/")
    assert r.status_code == 200, (server.name, r.status_code, r.headers, server.output())
    assert SIGNED_IN in r.text, r.text


def assert_signed_out(client: httpx.Client, server: Server) -> None:
    r = client.get(server.base + "/")
    assert r.status_code == 302 and r.headers["location"].startswith(f"/flows/{FLOW}/"), (r.status_code, r.headers)


def session_cookie(client: httpx.Client) -> str:
    value = client.cookies.get(COOKIE_NAME)
    assert value, f"no {COOKIE_NAME} cookie: {client.cookies}"
    return value


def test_restart_between_identification_and_password_keeps_the_plan(
        tmp_path: Path, database_url: str, start_servers: Any) -> None:
    env = server_env(tmp_path, database_url, secrets.token_urlsafe(32))
    (first,) = start_servers(env, "before-restart")
    with httpx.Client(timeout=10) as client:
        assert_signed_out(client, first)
        expect(call(client, first), "identification", first)
        password = call(client, first, {"component": "identification", "uid_field": USERNAME})
        expect(password, "password", first)
        assert password["pending_identifier"] == USERNAME
        cookie = session_cookie(client)
        # Kept in the PostgreSQL store (no Redis configured), not in the process.
        assert pg_has_session(database_url, cookie)

        old_pid = first.proc.pid
        first.stop()
        assert first.proc.returncode == 0, first.output()
        (second,) = start_servers(env, "after-restart", port=first.port)
        assert second.proc.pid != old_pid

        login = call(client, second, {"component": "password", "password": PASSWORD})
        expect(login, "user_login", second)
        assert session_cookie(client) == cookie  # the same session carried the plan across the restart
        done = call(client, second, {"component": "user_login"})
        assert done == {"component": "redirect", "to": "/"}
        assert session_cookie(client) != cookie  # a new session id at login
        assert_signed_in(client, second)


@pytest.fixture(params=["postgres", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    """The key-value store of the servers: None (PostgreSQL) or a Redis URL."""
    if request.param == "postgres":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


def assert_session_in(store: str | None, database_url: str, cookie: str) -> None:
    if store is None:
        assert pg_has_session(database_url, cookie)
    else:
        assert redis_has_session(store, cookie)
        assert not pg_has_session(database_url, cookie), "with Redis configured the session belongs in Redis"


def test_one_login_alternating_between_two_processes_json(
        tmp_path: Path, database_url: str, start_servers: Any, store: str | None) -> None:
    secret = secrets.token_urlsafe(32)
    a, b = start_servers(server_env(tmp_path, database_url, secret, store), "a", "b")
    # Separate environments (data directories) but one deployment: same database, same store.
    with httpx.Client(timeout=10) as client:
        assert_signed_out(client, b)
        expect(call(client, a), "identification", a)
        expect(call(client, a, {"component": "identification", "uid_field": USERNAME}), "password", a)
        cookie = session_cookie(client)
        assert_session_in(store, database_url, cookie)
        expect(call(client, b, {"component": "password", "password": PASSWORD}), "user_login", b)
        assert session_cookie(client) == cookie
        assert call(client, a, {"component": "user_login"}) == {"component": "redirect", "to": "/"}
        signed_in = session_cookie(client)
        assert signed_in != cookie
        assert_session_in(store, database_url, signed_in)
        assert_signed_in(client, b)
        assert_signed_in(client, a)


# -- the HTML face ------------------------------------------------------------------------


class FormParser(HTMLParser):
    """The first ``<form method="post">`` of a page: its action and its named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, dict[str, str | None]] = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "form" and not self._done and (attributes.get("method") or "").lower() == "post":
            self._in_form = True
            self.action = attributes.get("action") or ""
        elif tag in ("input", "button", "select", "textarea") and self._in_form and attributes.get("name"):
            self.inputs[str(attributes["name"])] = attributes

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


def parse_form(html: str) -> FormParser:
    parser = FormParser()
    parser.feed(html)
    assert parser.action is not None, f"no POST form on the page:\n{html}"
    return parser


def html_get(client: httpx.Client, server: Server, path: str) -> tuple[FormParser, str]:
    r = client.get(server.base + path)
    assert r.status_code == 200, (server.name, path, r.status_code, r.text, server.output())
    assert r.headers["content-type"].startswith("text/html")
    return parse_form(r.text), r.text


def html_post(client: httpx.Client, server: Server, form: FormParser, fields: dict[str, str],
              expect_status: int = 303) -> str:
    """Submit ``form`` (its hidden inputs plus ``fields``) to ``server``; return the redirect target."""
    data = {name: attrs.get("value") or "" for name, attrs in form.inputs.items() if attrs.get("type") == "hidden"}
    data.update(fields)
    r = client.post(server.base + str(form.action), data=data)
    assert r.status_code == expect_status, (server.name, r.status_code, r.text, server.output())
    location = r.headers["location"]
    assert not urlsplit(location).netloc, location  # same-origin paths only
    return location


def test_one_login_alternating_between_two_processes_html(
        tmp_path: Path, database_url: str, start_servers: Any, store: str | None) -> None:
    a, b = start_servers(server_env(tmp_path, database_url, secrets.token_urlsafe(32), store), "a", "b")
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        r = client.get(a.base + "/")
        assert r.status_code == 302, r.text
        flow_url = r.headers["location"]
        assert flow_url.startswith(f"/flows/{FLOW}/?next=")

        identification, page = html_get(client, a, flow_url)
        assert identification.inputs["component"]["value"] == "identification", page
        assert "uid_field" in identification.inputs, page
        token = identification.inputs["csrf_token"]["value"]
        assert token

        # B checks the token against the shared session: a wrong one is refused, nothing advances.
        r = client.post(b.base + str(identification.action),
                        data={"csrf_token": "not-" + str(token), "component": "identification", "uid_field": USERNAME})
        assert r.status_code == 403, (r.status_code, r.text)
        location = html_post(client, b, identification, {"uid_field": USERNAME})
        assert location == flow_url

        password, page = html_get(client, b, location)
        assert password.inputs["component"]["value"] == "password", page
        assert password.inputs["csrf_token"]["value"] == token  # one token per session, seen by both
        location = html_post(client, a, password, {"password": PASSWORD})

        login, page = html_get(client, a, location)
        assert login.inputs["component"]["value"] == "user_login", page
        assert login.inputs["remember_me"]["type"] == "checkbox", page
        location = html_post(client, b, login, {}, expect_status=302)
        assert location == "/"

        r = client.get(a.base + location)
        assert r.status_code == 200 and SIGNED_IN in r.text, (r.status_code, r.text)
        assert_signed_in(client, b)
        assert_session_in(store, database_url, session_cookie(client))
