"""Recovery codes: a set of 10 single-use codes per user, shown once, stored as SHA-256, regenerable;
and the ``static`` device class that ``authenticator_validate`` checks them with.

The setup stage shows a new set; the set replaces the user's previous one when the user goes on
(so a reload before that shows the same codes, and an abandoned setup changes nothing).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keystage.engine.authenticators import Device, DeviceClass, enrolling_user_id
from keystage.engine.flow_context import ContextKey
from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.stage import Continue, Deny, Stage, StageConfig, StageResult

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage
    from keystage.engine.stage import StageContext

CODES_PER_SET = 10
# No 0/o, 1/l/i: codes are read off paper. 10 characters of 31 are about 50 bits.
ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
CODE_LENGTH = 10
SETUP_CODES: ContextKey[list[str]] = ContextKey("authenticator_static_setup")
LABEL = N_("Recovery codes")


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def normalize(code: str) -> str | None:
    """The code as stored (no dashes or spaces, lower case), or None when it cannot be one."""
    cleaned = code.strip().lower().replace("-", "").replace(" ", "")
    if len(cleaned) != CODE_LENGTH or any(c not in ALPHABET for c in cleaned):
        return None
    return cleaned


def digest(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


async def replace_codes(keystage: Keystage, user_id: int, codes: list[str]) -> None:
    """Make ``codes`` the user's only set (one transaction)."""
    hashes = [digest(c) for c in (normalize(code) for code in codes) if c is not None]
    async with keystage.pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM authenticator_static_codes WHERE user_id = $1", user_id)
        await conn.execute(
            "INSERT INTO authenticator_static_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])",
            user_id, hashes)


class StaticDevices(DeviceClass):
    kind = "static"
    label = LABEL

    async def list(self, keystage: Keystage, user_id: int) -> list[Device]:
        row = await keystage.pool.fetchrow(
            """SELECT min(id) AS id, min(created_at) AS created_at, max(used_at) AS last_used_at
               FROM authenticator_static_codes WHERE user_id = $1 AND used_at IS NULL""", user_id)
        if row is None or row["id"] is None:
            return []
        return [Device(self.kind, row["id"], LABEL, row["created_at"], row["last_used_at"])]

    async def remove(self, keystage: Keystage, user_id: int, device_id: int) -> bool:
        # The set is named by one of its codes' ids (see list()); it must be this user's.
        done = await keystage.pool.execute(
            """DELETE FROM authenticator_static_codes WHERE user_id = $1
               AND EXISTS (SELECT 1 FROM authenticator_static_codes WHERE id = $2 AND user_id = $1)""",
            user_id, device_id)
        return not done.endswith(" 0")

    async def verify(self, ctx: StageContext, user_id: int, response: Mapping[str, Any],
                     config: Any = None) -> bool | None:
        code = response.get("code")
        cleaned = normalize(code[:64]) if isinstance(code, str) else None
        if cleaned is None:
            return None
        # One statement: the same code used twice at once is accepted once.
        used = await ctx.keystage.pool.fetchval(
            """UPDATE authenticator_static_codes SET used_at = now()
               WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING id""",
            user_id, digest(cleaned))
        return used is not None


class StaticSetupStage(Stage):
    """Show a new set of recovery codes to the pending user and make it theirs."""

    type_name = "authenticator_static"
    Config = StageConfig
    template = "authenticator_static.html"
    template_folder = Path(__file__).parent / "templates"
    device_class = StaticDevices()

    def _user_id(self) -> int | None:
        return enrolling_user_id(self.ctx)

    async def challenge(self) -> dict[str, Any] | None:
        if self._user_id() is None:
            return None  # submit() denies
        codes = self.ctx.plan.get(SETUP_CODES)
        if codes is None:
            codes = [new_code() for _ in range(CODES_PER_SET)]
            self.ctx.plan.set(SETUP_CODES, codes)
        return {"codes": list(codes)}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = self._user_id()
        codes = self.ctx.plan.get(SETUP_CODES)
        if user_id is None or not codes:
            return Deny(self.ctx.gettext("Please identify yourself first."))
        await replace_codes(self.ctx.keystage, user_id, codes)
        self.ctx.plan.pop(SETUP_CODES)  # shown once: gone from the plan as soon as they are stored
        return Continue()


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [StaticSetupStage]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "sql"


__all__ = ["StaticDevices", "StaticSetupStage", "new_code", "normalize", "replace_codes"]
