"""The audit log: who did what, when, from where. Every event is stored, then offered to plugins."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from .runtime import Keystage

log = logging.getLogger("keystage.events")


@dataclasses.dataclass(frozen=True)
class Event:
    action: str
    user_id: int | None = None
    username: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    context: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: int | None = None
    created_at: dt.datetime | None = None


async def record(keystage: Keystage, event: Event, *, conn: asyncpg.Connection | None = None) -> Event:
    """Store ``event`` and call the ``on_event`` hook of every plugin."""
    query = """INSERT INTO events (action, user_id, username, client_ip, user_agent, context)
               VALUES ($1, $2, $3, $4::inet, $5, $6::jsonb) RETURNING id, created_at"""
    args = (event.action, event.user_id, event.username, event.client_ip, event.user_agent,
            json.dumps(event.context, default=str))
    row = await (conn or keystage.pool).fetchrow(query, *args)
    stored = dataclasses.replace(event, id=row["id"], created_at=row["created_at"])
    await keystage.plugins.acall_each("on_event", event=stored, keystage=keystage)
    return stored


async def recent(keystage: Keystage, *, action: str | None = None, limit: int = 50) -> list[Event]:
    rows = await keystage.pool.fetch(
        """SELECT id, action, user_id, username, host(client_ip) AS client_ip, user_agent, context, created_at
           FROM events WHERE $1::text IS NULL OR action = $1 ORDER BY id DESC LIMIT $2""",
        action, limit,
    )
    return [
        Event(r["action"], r["user_id"], r["username"], r["client_ip"], r["user_agent"],
              json.loads(r["context"]), r["id"], r["created_at"])
        for r in rows
    ]
