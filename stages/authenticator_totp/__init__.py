"""TOTP authenticator: set up an authenticator app (QR code as inline SVG, the first code confirms),
and the ``totp`` device class that ``authenticator_validate`` checks codes with.

Codes: RFC 6238, 30 s, 6 digits, one step either side (``rfc6238.py``). A code is refused once a code
of its step or a later one has been accepted for the device (replay). Failed codes count against the
user in the brute-force throttle (``kind="code"``).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keystage.engine.authenticators import Device, DeviceClass, enrolling_user_id
from keystage.engine.flow_context import AUTHENTICATED_BY, ContextKey
from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.stage import Continue, Deny, FieldError, Invalid, Stage, StageConfig, StageResult
from keystage.engine.throttle import throttle_of

from . import rfc6238

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage
    from keystage.engine.stage import StageContext

# The secret being set up, base32, until the first code confirms it.
SETUP_SECRET: ContextKey[str] = ContextKey("authenticator_totp_setup")
DEFAULT_NAME = N_("Authenticator app")
MAX_CODE = 16


def _cipher(keystage: Keystage) -> AESGCM:
    # Derived once per process; the server's secret key never encrypts anything directly.
    cipher = keystage.state.get("authenticator_totp_cipher")
    if cipher is None:
        key = HKDF(SHA256(), 32, salt=None, info=b"keystage authenticator_totp secret v1").derive(
            keystage.settings.secret_key.encode())
        cipher = keystage.state["authenticator_totp_cipher"] = AESGCM(key)
    return cipher  # type: ignore[no-any-return]


def seal(keystage: Keystage, secret: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + _cipher(keystage).encrypt(nonce, secret, b"totp")


def unseal(keystage: Keystage, sealed: bytes) -> bytes:
    return _cipher(keystage).decrypt(sealed[:12], sealed[12:], b"totp")


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as an inline SVG element (no image request, no external service)."""
    import segno

    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", xmldecl=False, svgns=True, scale=5, border=2,
                                    nl=False, svgclass="qr", lineclass=None, title=None)
    return out.getvalue().decode()


class TOTPDevices(DeviceClass):
    kind = "totp"
    label = DEFAULT_NAME

    async def list(self, keystage: Keystage, user_id: int) -> list[Device]:
        rows = await keystage.pool.fetch(
            "SELECT id, name, created_at, last_used_at FROM authenticator_totp_devices WHERE user_id = $1 ORDER BY id",
            user_id)
        return [Device(self.kind, r["id"], r["name"], r["created_at"], r["last_used_at"]) for r in rows]

    async def remove(self, keystage: Keystage, user_id: int, device_id: int) -> bool:
        done = await keystage.pool.execute(
            "DELETE FROM authenticator_totp_devices WHERE id = $1 AND user_id = $2", device_id, user_id)
        return bool(done.endswith(" 1"))

    async def verify(self, ctx: StageContext, user_id: int, response: Mapping[str, Any],
                     config: Any = None) -> bool | None:
        code = response.get("code")
        if not isinstance(code, str) or not code.strip():
            return None
        code = code.strip()[:MAX_CODE]
        if not code.replace(" ", "").isdigit():
            return None  # not a TOTP code: perhaps a recovery code
        keystage = ctx.keystage
        now = throttle_of(keystage).clock()
        rows = await keystage.pool.fetch(
            "SELECT id, secret FROM authenticator_totp_devices WHERE user_id = $1", user_id)
        for row in rows:
            step = rfc6238.matching_step(unseal(keystage, row["secret"]), code, now=now)
            if step is None:
                continue
            # One statement, so two workers given the same code cannot both accept it.
            used = await keystage.pool.fetchval(
                """UPDATE authenticator_totp_devices SET last_used_step = $2, last_used_at = now()
                   WHERE id = $1 AND (last_used_step IS NULL OR last_used_step < $2) RETURNING id""",
                row["id"], step)
            return used is not None
        return False


class TOTPSetupConfig(StageConfig):
    # Shown by the app next to the account; the brand's name is a good choice.
    issuer: str = pydantic.Field(default="keystage", min_length=1, max_length=64)


class TOTPSetupStage(Stage):
    """Set up an authenticator app for the pending user (needs the session's user or an earlier
    authentication in this flow)."""

    type_name = "authenticator_totp"
    Config = TOTPSetupConfig
    template = "authenticator_totp.html"
    template_folder = Path(__file__).parent / "templates"
    device_class = TOTPDevices()

    config: TOTPSetupConfig

    def _user_id(self) -> int | None:
        return enrolling_user_id(self.ctx)

    async def challenge(self) -> dict[str, Any] | None:
        user_id = self._user_id()
        user = await self.ctx.keystage.users.get(user_id) if user_id else None
        if user is None:
            return None  # submit() denies
        encoded = self.ctx.plan.get(SETUP_SECRET)
        if encoded is None:
            encoded = rfc6238.b32(rfc6238.new_secret())
            self.ctx.plan.set(SETUP_SECRET, encoded)
        secret = _decode(encoded)
        uri = rfc6238.provisioning_uri(secret, account=user.email or user.username, issuer=self.config.issuer)
        return {
            "config_url": uri,
            "secret": " ".join(encoded[i:i + 4] for i in range(0, len(encoded), 4)),
            "qr_svg": qr_svg(uri),
        }

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = self._user_id()
        user = await self.ctx.keystage.users.get(user_id) if user_id else None
        encoded = self.ctx.plan.get(SETUP_SECRET)
        if user is None or encoded is None:
            return Deny(self.ctx.gettext("Please identify yourself first."))
        code = response.get("code")
        if not isinstance(code, str) or not code.strip():
            return Invalid({"code": [FieldError("required", self.ctx.gettext("Please enter the code."))]})
        throttle = throttle_of(self.ctx.keystage)
        attempt = await throttle.check(username=user.username, ip=self.ctx.request.client_ip, kind="code",
                                       user_id=user.id)
        if attempt.blocked:
            return Invalid({"code": [FieldError("throttled", self.ctx.gettext(
                "Too many failed attempts. Please try again later."))]})
        secret = _decode(encoded)
        step = rfc6238.matching_step(secret, code[:MAX_CODE], now=throttle.clock())
        if step is None:
            await throttle.failed(attempt)
            return Invalid({"code": [FieldError("invalid", self.ctx.gettext("The code is not correct."))]})
        await throttle.succeeded(attempt)
        await self.ctx.keystage.pool.execute(
            """INSERT INTO authenticator_totp_devices (user_id, name, secret, last_used_step, last_used_at)
               VALUES ($1, $2, $3, $4, now())""",
            user.id, DEFAULT_NAME, seal(self.ctx.keystage, secret), step)
        self.ctx.plan.pop(SETUP_SECRET)
        self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), "totp"])
        return Continue()


def _decode(encoded: str) -> bytes:
    return base64.b32decode(encoded + "=" * (-len(encoded) % 8))


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [TOTPSetupStage]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "sql"


__all__ = ["TOTPDevices", "TOTPSetupStage", "qr_svg", "seal", "unseal"]
