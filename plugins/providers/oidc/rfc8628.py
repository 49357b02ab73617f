"""Device authorization grant (RFC 8628): a device without a browser shows a code, the user enters it
at ``/device`` on another screen, signs in and consents there, and the device polls the token endpoint.

The device code is stored as a digest; the user code is short (8 letters from an alphabet without
vowels or look-alikes, section 6.1) and lives ``LIFETIME`` seconds. Entering a user code starts the same
authorization machinery as ``/oauth2/authorize`` (application policies, the provider's authorization
flow with its consent stage); approval marks the device code, which the next poll exchanges once.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

from .tokens import digest, new_secret

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

    from .tokens import Client

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
LIFETIME = 600
INTERVAL = 5


def normalise(user_code: str) -> str:
    letters = "".join(ch for ch in user_code.upper() if ch in ALPHABET)
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else ""


async def start(keystage: Keystage, client: Client, scope: str) -> tuple[str, str]:
    """A new (device_code, user_code) pair for ``client``."""
    device_code = new_secret()
    for _ in range(5):
        user_code = normalise("".join(secrets.choice(ALPHABET) for _ in range(8)))
        inserted = await keystage.pool.fetchval(
            """INSERT INTO oidc_device_codes (device_code_hash, user_code, provider_id, scope, poll_interval,
                                              expires_at)
               VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
               ON CONFLICT (user_code) DO NOTHING RETURNING 1""",
            digest(device_code), user_code, client.provider_id, scope, INTERVAL, float(LIFETIME))
        if inserted:
            return device_code, user_code
    raise RuntimeError("no free user code")


async def pending(keystage: Keystage, user_code: str) -> Any:
    """The pending, unexpired device request of ``user_code`` with its client id, or None."""
    return await keystage.pool.fetchrow(
        """SELECT d.device_code_hash, d.scope, p.config ->> 'client_id' AS client_id
           FROM oidc_device_codes d JOIN providers p ON p.id = d.provider_id
           WHERE d.user_code = $1 AND d.status = 'pending' AND d.expires_at > now()""", user_code)


async def decide(keystage: Keystage, device_code_hash: bytes, *, user_id: int | None, auth_time: float,
                 approved: bool) -> None:
    await keystage.pool.execute(
        """UPDATE oidc_device_codes SET status = $2, user_id = $3, auth_time = to_timestamp($4)
           WHERE device_code_hash = $1 AND status = 'pending'""",
        device_code_hash, "approved" if approved else "denied", user_id, auth_time)


@dataclasses.dataclass(frozen=True)
class Poll:
    outcome: str  # "approved", or an RFC 8628 3.5 error code
    user_id: int | None = None
    scope: str = ""
    auth_time: float | None = None


async def poll(keystage: Keystage, client: Client, device_code: str) -> Poll:
    """One poll of the token endpoint (section 3.4/3.5): slow_down when faster than the interval."""
    row = await keystage.pool.fetchrow(
        """WITH old AS (SELECT last_poll, poll_interval FROM oidc_device_codes
                        WHERE device_code_hash = $1 AND provider_id = $2 FOR UPDATE)
           UPDATE oidc_device_codes d
           SET last_poll = now(),
               status = CASE WHEN d.status = 'approved' AND d.expires_at > now() THEN 'used' ELSE d.status END,
               poll_interval = CASE WHEN old.last_poll > now() - make_interval(secs => old.poll_interval)
                                    AND d.status = 'pending' THEN d.poll_interval + 5 ELSE d.poll_interval END
           FROM old, oidc_device_codes before
           WHERE d.device_code_hash = $1 AND before.device_code_hash = $1
           RETURNING before.status, d.user_id, d.scope, extract(epoch FROM d.auth_time) AS auth_time,
                     d.expires_at < now() AS expired,
                     coalesce(old.last_poll > now() - make_interval(secs => old.poll_interval), false) AS too_fast""",
        digest(device_code), client.provider_id)
    if row is None:
        return Poll("invalid_grant")
    if row["expired"]:
        return Poll("expired_token")
    if row["status"] == "denied":
        return Poll("access_denied")
    if row["status"] == "used":
        return Poll("invalid_grant")
    if row["status"] == "pending":
        return Poll("slow_down" if row["too_fast"] else "authorization_pending")
    return Poll("approved", row["user_id"], row["scope"], row["auth_time"])
