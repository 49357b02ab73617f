"""Run several HTTP server worker processes and stop them gracefully on SIGINT/SIGTERM.

Written instead of ``hypercorn.run.run`` because that one sets a multiprocessing Event
inside its signal handler, and a second signal arriving meanwhile (an orchestrator's
SIGTERM plus a terminal's SIGINT, say) deadlocks the parent. Here the handler only sets
a flag; the main loop does the rest. A worker that dies unexpectedly is restarted, at
most a few times a minute, so one crash does not take the server down.
"""

from __future__ import annotations

import logging
import signal
import time
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

from . import http_server

log = logging.getLogger("keystage.supervisor")
RESTARTS_PER_MINUTE = 5


def worker(sockets: list[Any], shutdown_event: Event) -> None:
    """One worker process: the app and settings from the environment the parent prepared (``asgi.py``),
    served until the parent says stop."""
    import asyncio

    from .asgi import app, settings

    async def stop() -> None:
        while not shutdown_event.is_set():
            await asyncio.sleep(0.1)

    http_server.freeze_after_startup(app)
    with http_server.runner() as runner:
        runner.run(http_server.serve(settings.server, app, settings, sockets, stop))


def run(sockets: list[Any], workers: int) -> int:
    ctx = get_context("spawn")
    shutdown_event = ctx.Event()
    stopping = False
    restarts: list[float] = []

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def start() -> BaseProcess:
        process = ctx.Process(
            target=worker, kwargs={"shutdown_event": shutdown_event, "sockets": sockets},
        )
        process.start()
        return process

    # Workers inherit "ignore SIGINT": a Ctrl-C reaches the whole process group, and the
    # parent alone decides how to stop.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    processes = [start() for _ in range(workers)]
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = 0
    try:
        while not stopping:
            wait([p.sentinel for p in processes], timeout=0.5)
            for index, process in enumerate(processes):
                if process.exitcode is None or stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60]
                if len(restarts) >= RESTARTS_PER_MINUTE:
                    log.error("workers keep dying (last exit code %s); stopping", process.exitcode)
                    exit_code = 1
                    stopping = True
                    break
                log.warning("worker %s exited with code %s; starting a new one", process.pid, process.exitcode)
                restarts.append(now)
                processes[index] = start()
    finally:
        shutdown_event.set()
        deadline = time.monotonic() + http_server.GRACEFUL_SECONDS + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        signal.signal(signal.SIGINT, previous)
    return exit_code
