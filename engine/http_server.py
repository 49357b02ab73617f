"""The HTTP server under keystage's ASGI app: uvicorn (the default) or Hypercorn (``KEYSTAGE_SERVER``).

Why uvicorn by default: measured on these machines (bench/oidc.md, shared/bench/web_stack.json),
Hypercorn spends ~150 µs of CPU per request before the app sees it (h11, its pure-Python parser, and
its per-request tasks); uvicorn with httptools' C parser on uvloop ~19 µs. On the token endpoint that
is the difference between 2.4x and 1.1x the peer OpenID provider's CPU per request. Hypercorn stays
selectable, unchanged, for deployments that want it (HTTP/2 without a proxy, say).

Both are driven the same way: the sockets are bound once, in the parent (workers share them), the
server runs on uvloop until a stop trigger returns, then drains its connections gracefully. Neither
server touches signals: ``serve.py`` and ``supervisor.py`` own them, so that a stop always goes
through the code that stops the embedded PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .config import SERVERS, Settings

__all__ = ["SERVERS", "bind", "freeze_after_startup", "runner", "serve"]
# The request line and headers of one request: what Hypercorn (h11) allows by default. httptools
# itself has no limit, and a client must not be able to grow a worker's memory without end.
MAX_HEAD_BYTES = 16 * 1024
KEEP_ALIVE_SECONDS = 30
GRACEFUL_SECONDS = 10
BACKLOG = 1024

StopTrigger = Callable[[], Awaitable[Any]]


def bind(settings: Settings) -> list[socket.socket]:
    """The listening socket, bound here so that every worker accepts on the same one."""
    host, port = settings.listen_host_port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(True)
    return [sock]


def runner() -> asyncio.Runner:
    """An asyncio runner on uvloop (part of keystage's dependencies; the stdlib loop when absent)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with keystage
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def freeze_after_startup(app: Any) -> None:
    """Once ``app`` has started (its ``before_serving`` functions, the plugins' included), hide
    everything made so far from the garbage collector (``gc.freeze``).

    Why: modules, templates, catalogs, plugins and the app live as long as the process, yet every
    full collection walked them all. With a request that makes many objects (the library page of
    1,000 applications) collections come often, and one in ten such pages took 120 ms instead of
    25 (bench/oidc.md). What startup made and later drops is never collected: a few objects, once.
    Only for serving processes: a test suite that starts hundreds of apps would keep each one."""

    @app.before_serving
    async def _freeze() -> None:
        gc.freeze()


async def serve(name: str, app: Any, settings: Settings, sockets: list[socket.socket], stop: StopTrigger) -> None:
    """Serve ``app`` on ``sockets`` with the server called ``name`` until ``stop()`` returns."""
    if name == "hypercorn":
        await _serve_hypercorn(app, settings, sockets, stop)
    else:
        await _serve_uvicorn(app, settings, sockets, stop)


# -- uvicorn --------------------------------------------------------------------------------


def _bounded_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """httptools with a cap on the request line and headers. Over it the parser stops (the
        exception ends ``feed_data``) and uvicorn answers 400 and closes the connection."""

        head_bytes = 0

        def on_message_begin(self) -> None:
            self.head_bytes = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            self.head_bytes += size
            if self.head_bytes > MAX_HEAD_BYTES:
                raise ValueError("request head too large")

    return BoundedHttpToolsProtocol


async def _serve_uvicorn(app: Any, settings: Settings, sockets: list[socket.socket], stop: StopTrigger) -> None:
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # keystage's process owns SIGINT/SIGTERM (and re-raising them after the drain, as
            # uvicorn does, would skip stopping the embedded PostgreSQL).
            yield

    config = uvicorn.Config(
        app, http=_bounded_protocol(), ws="none", lifespan="on", interface="asgi3", loop="none",
        # keystage reads X-Forwarded-For itself, from KEYSTAGE_TRUSTED_PROXIES only.
        proxy_headers=False, server_header=False, access_log=False, log_config=None,
        log_level=None, timeout_keep_alive=KEEP_ALIVE_SECONDS,  # levels: logs.configure
        timeout_graceful_shutdown=GRACEFUL_SECONDS, backlog=BACKLOG)
    server = Server(config)

    async def stop_when_told() -> None:
        await stop()
        server.should_exit = True

    watcher = asyncio.ensure_future(stop_when_told())
    try:
        await server.serve(sockets=sockets)
    finally:
        watcher.cancel()
    if not server.started:
        raise RuntimeError("the server did not start (see the log above)")


# -- Hypercorn ------------------------------------------------------------------------------


def hypercorn_config(settings: Settings) -> Any:
    from hypercorn.config import Config

    config = Config()
    host, port = settings.listen_host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.loglevel = settings.log_level
    config.graceful_timeout = GRACEFUL_SECONDS
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    return config


async def _serve_hypercorn(app: Any, settings: Settings, sockets: list[socket.socket], stop: StopTrigger) -> None:
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Sockets
    from hypercorn.utils import wrap_app

    config = hypercorn_config(settings)
    await worker_serve(wrap_app(app, config.wsgi_max_body_size, "asgi"), config,
                       sockets=Sockets([], list(sockets), []), shutdown_trigger=stop)
