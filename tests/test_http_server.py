"""The HTTP servers under keystage (engine/http_server.py), each one real, on a real socket.

What keystage relies on from them and checks here for both: a forwarded header never changes who
the client is (keystage decides that itself, from KEYSTAGE_TRUSTED_PROXIES), an oversized request
head is refused without taking the server down, keep-alive works, and a stop drains the request
in flight before the server returns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keystage.engine import http_server
from keystage.engine.config import SERVERS, Settings
from keystage.engine.testing import free_port


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that answers with what the server told it about the request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(0.6)
    payload = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"], "path": scope["path"],
                          "body": len(body), "headers": len(scope["headers"])}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class Served:
    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(listen=f"127.0.0.1:{self.port}", server=name, log_level="WARNING")
        self.sockets = http_server.bind(self.settings)
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(
            http_server.serve(name, echo_app, self.settings, self.sockets, self.stop.wait))

    async def ready(self) -> None:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise AssertionError(f"{self.name} did not start")

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 20)
        for sock in self.sockets:
            sock.close()


@pytest.fixture(params=SERVERS)
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    server = Served(request.param)
    try:
        await server.ready()
        yield server
    finally:
        if not server.task.done():
            await server.close()


async def raw_request(port: int, head: bytes) -> bytes:
    """Send ``head`` as it is and return what came back before the server closed or went quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
    except ConnectionError:
        pass
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_forwarded_headers_do_not_change_the_client(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base) as client:
        answer = await client.get("/", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                                                "Forwarded": "for=203.0.113.9;proto=https", "X-Real-IP": "203.0.113.9"})
    seen = answer.json()
    assert (seen["client"], seen["scheme"]) == ("127.0.0.1", "http")


async def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base) as client:
        paths = [(await client.post(f"/n{i}", content=b"x" * i)).json() for i in range(20)]
    assert [(p["path"], p["body"]) for p in paths] == [(f"/n{i}", i) for i in range(20)]


@pytest.mark.parametrize("where", ["headers", "url"])
async def test_an_oversized_request_head_is_refused_and_the_server_goes_on(served: Served, where: str) -> None:
    # Far over the limit, so that it cannot arrive in one read (h11 counts what it buffers).
    big = "a" * (16 * http_server.MAX_HEAD_BYTES)
    if where == "headers":
        head = f"GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n".encode()
    else:
        head = f"GET /{big} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answer = await raw_request(served.port, head)
    assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"413", b"414", b"431"), answer[:200]
    async with httpx.AsyncClient(base_url=served.base) as client:
        assert (await client.get("/after")).json()["path"] == "/after"


async def test_many_ordinary_headers_under_the_limit_are_served(served: Served) -> None:
    # Browsers with many cookies send a few KiB of headers: well under the limit, always served.
    headers = {f"X-H{i}": "v" * 100 for i in range(80)}
    async with httpx.AsyncClient(base_url=served.base) as client:
        answer = await client.get("/", headers=headers)
    assert answer.status_code == 200 and answer.json()["headers"] >= 80


async def test_a_head_sent_without_end_grows_nothing_without_end(served: Served) -> None:
    # Header lines one after another, never ending: refused once the limit is passed.
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    refused = False
    try:
        for i in range(64):
            writer.write(f"X-{i}: {'b' * 1000}\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0)
    except ConnectionError:
        refused = True
    if not refused:
        answer = await asyncio.wait_for(reader.read(4096), 5)
        refused = answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"413", b"431")
    writer.close()
    assert refused


async def test_stop_lets_the_request_in_flight_finish(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base) as client:
        slow = asyncio.ensure_future(client.get("/slow"))
        await asyncio.sleep(0.2)
        served.stop.set()
        answer = await slow
    assert answer.status_code == 200 and answer.json()["path"] == "/slow"
    await asyncio.wait_for(served.task, 20)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)


@pytest.mark.parametrize(("size", "served_ok"), [(http_server.MAX_HEAD_BYTES - 512, True),
                                                 (http_server.MAX_HEAD_BYTES + 512, False)])
async def test_uvicorn_counts_the_head_even_when_it_arrives_at_once(size: int, served_ok: bool) -> None:
    # httptools has no limit of its own: the cap is keystage's (BoundedHttpToolsProtocol).
    server = Served("uvicorn")
    try:
        await server.ready()
        answer = await raw_request(server.port, f"GET / HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * size}\r\n\r\n".encode())
        assert (answer.split(b" ", 2)[1] == b"200") is served_ok, answer[:100]
    finally:
        await server.close()


async def test_a_serving_app_hides_what_startup_made_from_the_collector() -> None:
    import gc

    from quart import Quart

    from keystage.engine.http_server import freeze_after_startup

    app = Quart("freeze-test")
    seen = []

    @app.before_serving
    async def _plugin_startup() -> None:  # registered first, like create_app's (plugins included)
        seen.append(gc.get_freeze_count())

    freeze_after_startup(app)
    gc.unfreeze()
    try:
        async with app.test_app():
            assert seen == [0] and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
