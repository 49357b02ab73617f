"""Deleting codes and tokens nobody can use any more, in the background of each worker.

A row is kept for ``KEEP`` after it expired (so that the reuse of an expired refresh token or code
is still recognised as reuse for a while), then deleted in batches. Several workers doing this at
once only compete for the same rows; ``SKIP LOCKED`` keeps them out of each other's way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

log = logging.getLogger("keystage.oidc")
INTERVAL = 600.0
KEEP = "1 day"
BATCH = 5000


async def purge(keystage: Keystage) -> int:
    """Delete expired codes and tokens (older than ``KEEP``); returns how many rows went."""
    deleted = 0
    for table, key in (("oidc_codes", "code_hash"), ("oidc_tokens", "id"), ("oidc_device_codes", "device_code_hash")):
        while True:
            status = await keystage.pool.execute(
                f"""DELETE FROM {table} WHERE {key} IN (
                        SELECT {key} FROM {table} WHERE expires_at < now() - interval '{KEEP}'
                        LIMIT {BATCH} FOR UPDATE SKIP LOCKED)""")
            count = int(status.split()[-1])
            deleted += count
            if count < BATCH:
                break
    return deleted


async def purge_periodically(keystage: Keystage, interval: float = INTERVAL) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await purge(keystage)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed round is retried at the next one
            log.exception("purging expired OIDC codes and tokens failed")


def start(keystage: Keystage) -> None:
    if "oidc_cleanup" not in keystage.state:
        keystage.state["oidc_cleanup"] = asyncio.create_task(purge_periodically(keystage), name="keystage-oidc-purge")


async def stop(keystage: Keystage) -> None:
    task = keystage.state.pop("oidc_cleanup", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
