"""``keystage serve``: check the database, apply migrations, then run Hypercorn.

The parent process owns the embedded PostgreSQL (when no database is configured), so
stopping the server — Ctrl-C or SIGTERM — leaves no PostgreSQL process behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path

from hypercorn.config import Config as HypercornConfig

from .config import Settings
from .metrics import MULTIPROC_ENV
from .runtime import Keystage

log = logging.getLogger("keystage")


def hypercorn_config(settings: Settings, workers: int) -> HypercornConfig:
    config = HypercornConfig()
    host, port = settings.listen_host_port
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.workers = workers
    config.application_path = "keystage.engine.asgi:app"
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.loglevel = settings.log_level
    config.graceful_timeout = 10
    config.keep_alive_timeout = 30
    return config


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
        config = hypercorn_config(settings, workers)
        log.info("keystage listening on %s with %d worker(s), external URL %s",
                 config.bind[0], workers, settings.external_url)
        try:
            if workers == 1:
                return asyncio.run(_serve_in_process(settings, config))
            from .supervisor import run

            return run(config)
        finally:
            if os.environ.get(MULTIPROC_ENV):
                shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)


async def _serve_in_process(settings: Settings, config: HypercornConfig) -> int:
    from hypercorn.asyncio import serve as hypercorn_serve

    from .app import create_app

    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    return 0
