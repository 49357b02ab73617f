"""``keystage serve``: check the database, apply migrations, then run the HTTP server (``http_server.py``).

The parent process owns the embedded PostgreSQL (when no database is configured), so
stopping the server — Ctrl-C or SIGTERM — leaves no PostgreSQL process behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
from pathlib import Path

from . import http_server
from .config import Settings
from .metrics import MULTIPROC_ENV
from .runtime import Keystage

log = logging.getLogger("keystage")


def _prepare_metrics_dir(settings: Settings, workers: int) -> None:
    if workers == 1:
        return
    directory = Path(settings.data_dir) / "metrics" / str(os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)


async def _migrate(keystage: Keystage) -> None:
    await keystage.open(migrate=True)
    await keystage.close()


def serve(settings: Settings, *, workers: int) -> int:
    """Run until SIGINT/SIGTERM; return the exit code."""
    from .cli import database

    # Plugins load before any database starts: a broken plugin costs no initdb and prints one line.
    keystage = Keystage(settings)
    with database(settings):
        # Fail fast, in this process, with one line: unreachable database, bad migration.
        asyncio.run(_migrate(keystage))
        _prepare_metrics_dir(settings, workers)
        host, port = settings.listen_host_port
        try:
            sockets = http_server.bind(settings)
        except OSError as error:
            log.error("keystage cannot listen on %s:%d (KEYSTAGE_LISTEN): %s", host, port, error.strerror or error)
            return 1
        log.info("keystage listening on %s:%d (%s) with %d worker(s), external URL %s",
                 host, port, settings.server, workers, settings.external_url)
        try:
            if workers == 1:
                with http_server.runner() as runner:
                    return runner.run(_serve_in_process(settings, sockets))
            from .supervisor import run

            return run(sockets, workers)
        finally:
            for sock in sockets:
                sock.close()
            if os.environ.get(MULTIPROC_ENV):
                shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)


async def _serve_in_process(settings: Settings, sockets: list[socket.socket]) -> int:
    from .app import create_app

    app = create_app(settings)
    http_server.freeze_after_startup(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await http_server.serve(settings.server, app, settings, sockets, stop.wait)
    return 0
