"""WebAuthn: security keys and passkeys (py_webauthn).

* ``authenticator_webauthn`` — register a credential for the pending user (several per user, each
  named); resident keys (passkeys), user verification and attachment as configured; attestation
  ``none`` by default.
* ``webauthn_login`` — passwordless: sign in with a passkey (a discoverable credential), no username.
* the ``webauthn`` device class: ``authenticator_validate`` offers it as a second factor, and the
  ``identification`` stage (``passkey_login: true``) offers passkeys in the browser's username field
  (conditional mediation, ``autocomplete="username webauthn"``).

The browser side is ``web/static/webauthn.js``; templates give it the options as JSON and its
messages already translated. Challenges live in the plan, one per stage, and are used once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
import pydantic
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException

from keystage.engine import events
from keystage.engine.authenticators import PASSKEY, Device, DeviceClass, enrolling_user_id
from keystage.engine.flow_context import AUTHENTICATED_BY, PENDING_IDENTIFIER, PENDING_USER, ContextKey
from keystage.engine.hookspecs import hookimpl
from keystage.engine.i18n import N_
from keystage.engine.stage import Continue, Deny, FieldError, Invalid, Stage, StageConfig, StageResult

from . import relying_party as rp

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage
    from keystage.engine.stage import StageContext

# The outstanding challenge, base64url, by purpose ("register", "authenticate", "login").
CHALLENGES: ContextKey[dict[str, str]] = ContextKey("authenticator_webauthn_challenges")
LABEL = N_("Security key or passkey")
MAX_NAME = 64
Requirement = Literal["required", "preferred", "discouraged"]


def _issue(ctx: StageContext, purpose: str) -> bytes:
    challenge = rp.new_challenge()
    challenges = dict(ctx.plan.get(CHALLENGES) or {})
    challenges[purpose] = bytes_to_base64url(challenge)
    ctx.plan.set(CHALLENGES, challenges)
    return challenge


def _take(ctx: StageContext, purpose: str) -> bytes | None:
    """The outstanding challenge for ``purpose``, removed: each is good for one response."""
    challenges = dict(ctx.plan.get(CHALLENGES) or {})
    encoded = challenges.pop(purpose, None)
    ctx.plan.set(CHALLENGES, challenges)
    return rp.base64url_to_bytes(encoded) if encoded else None


async def _credentials(keystage: Keystage, user_id: int) -> list[tuple[bytes, list[str]]]:
    rows = await keystage.pool.fetch(
        "SELECT credential_id, transports FROM authenticator_webauthn_credentials WHERE user_id = $1", user_id)
    return [(bytes(r["credential_id"]), list(r["transports"])) for r in rows]


def _messages(ctx: StageContext) -> dict[str, str]:
    """What webauthn.js may have to say, translated here (the script holds no text of its own)."""
    return {
        "failed": ctx.gettext("Your browser could not use the security key or passkey. Please try again."),
        "unsupported": ctx.gettext("This browser does not support security keys or passkeys."),
    }


async def _verify_assertion(ctx: StageContext, credential: dict[str, Any], challenge: bytes, *,
                            user_id: int | None, user_verification: str) -> int | None:
    """Check an assertion; on success update the counter and return the credential's user id."""
    keystage = ctx.keystage
    cid = rp.credential_id(credential)
    if cid is None:
        return None
    row = await keystage.pool.fetchrow(
        "SELECT id, user_id, public_key, sign_count FROM authenticator_webauthn_credentials WHERE credential_id = $1",
        cid)
    if row is None or (user_id is not None and row["user_id"] != user_id):
        return None
    if user_id is None:
        # Discoverable login: the authenticator names the user; it must be this credential's user.
        handle = (credential.get("response") or {}).get("userHandle")
        expected = rp.bytes_to_base64url(rp.user_handle(keystage.settings, row["user_id"]))
        if not isinstance(handle, str) or handle.rstrip("=") != expected:
            return None
    try:
        verified = rp.verify_authentication(
            keystage.settings, credential, challenge=challenge, public_key=bytes(row["public_key"]),
            sign_count=int(row["sign_count"]), user_verification=user_verification)
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        await events.record(keystage, events.Event(
            "login_failed", user_id=row["user_id"], client_ip=ctx.request.client_ip,
            user_agent=ctx.request.user_agent, context={"stage": "webauthn", "reason": str(exc)[:200]}))
        return None
    # Only forward: a concurrent use of the same response cannot move the counter back.
    updated = await keystage.pool.fetchval(
        """UPDATE authenticator_webauthn_credentials SET sign_count = $2, last_used_at = now()
           WHERE id = $1 AND (sign_count < $2 OR $2 = 0) RETURNING id""", row["id"], verified.new_sign_count)
    if updated is None:
        return None
    if verified.user_verified and user_id is None:
        ctx.plan.set(AUTHENTICATED_BY, [*(ctx.plan.get(AUTHENTICATED_BY) or []), PASSKEY])
    return int(row["user_id"])


class WebAuthnDevices(DeviceClass):
    kind = "webauthn"
    label = LABEL

    async def list(self, keystage: Keystage, user_id: int) -> list[Device]:
        rows = await keystage.pool.fetch(
            """SELECT id, name, created_at, last_used_at FROM authenticator_webauthn_credentials
               WHERE user_id = $1 ORDER BY id""", user_id)
        return [Device(self.kind, r["id"], r["name"], r["created_at"], r["last_used_at"]) for r in rows]

    async def remove(self, keystage: Keystage, user_id: int, device_id: int) -> bool:
        done = await keystage.pool.execute(
            "DELETE FROM authenticator_webauthn_credentials WHERE id = $1 AND user_id = $2", device_id, user_id)
        return bool(done.endswith(" 1"))

    async def challenge(self, ctx: StageContext, user_id: int, config: Any = None) -> dict[str, Any]:
        uv = getattr(config, "webauthn_user_verification", "preferred")
        options = rp.authentication_options(
            ctx.keystage.settings, challenge=_issue(ctx, "authenticate"),
            allowed=await _credentials(ctx.keystage, user_id), user_verification=uv)
        return {"webauthn": options, "webauthn_messages": _messages(ctx)}

    async def verify(self, ctx: StageContext, user_id: int, response: Mapping[str, Any],
                     config: Any = None) -> bool | None:
        credential = rp.parse(response.get("webauthn"))
        if credential is None:
            return None
        challenge = _take(ctx, "authenticate")
        if challenge is None:
            return False
        uv = getattr(config, "webauthn_user_verification", "preferred")
        return await _verify_assertion(ctx, credential, challenge, user_id=user_id, user_verification=uv) is not None

    # -- passwordless (no user yet) ---------------------------------------------------------

    async def login_challenge(self, ctx: StageContext, user_verification: str = "required") -> dict[str, Any]:
        options = rp.authentication_options(ctx.keystage.settings, challenge=_issue(ctx, "login"), allowed=[],
                                            user_verification=user_verification)
        return {"passkey": options, "webauthn_messages": _messages(ctx)}

    async def login(self, ctx: StageContext, raw: Any, user_verification: str = "required") -> int | None:
        """The user a discoverable credential's assertion proves, or None. Records PASSKEY in
        AUTHENTICATED_BY when the authenticator verified the user."""
        credential = rp.parse(raw)
        challenge = _take(ctx, "login")
        if credential is None or challenge is None:
            return None
        return await _verify_assertion(ctx, credential, challenge, user_id=None, user_verification=user_verification)


DEVICES = WebAuthnDevices()


class WebAuthnSetupConfig(StageConfig):
    rp_name: str = pydantic.Field(default="keystage", min_length=1, max_length=64)
    # "required" makes a passkey (a discoverable credential that can sign in without a username).
    resident_key: Requirement = "preferred"
    user_verification: Requirement = "preferred"
    authenticator_attachment: Literal["platform", "cross-platform"] | None = None
    attestation: Literal["none", "indirect", "direct"] = "none"


class WebAuthnSetupStage(Stage):
    type_name = "authenticator_webauthn"
    Config = WebAuthnSetupConfig
    template = "authenticator_webauthn.html"
    template_folder = Path(__file__).parent / "templates"
    needs_javascript = True
    device_class = DEVICES

    config: WebAuthnSetupConfig

    def _user_id(self) -> int | None:
        return enrolling_user_id(self.ctx)

    async def challenge(self) -> dict[str, Any] | None:
        user_id = self._user_id()
        user = await self.ctx.keystage.users.get(user_id) if user_id else None
        if user is None:
            return None  # submit() denies
        options = rp.registration_options(
            self.ctx.keystage.settings, rp_name=self.config.rp_name, user_id=user.id, username=user.username,
            display_name=user.display_name or "", challenge=_issue(self.ctx, "register"),
            existing=await _credentials(self.ctx.keystage, user.id), resident_key=self.config.resident_key,
            user_verification=self.config.user_verification, attachment=self.config.authenticator_attachment,
            attestation=self.config.attestation)
        return {"registration": options, "default_name": self.ctx.gettext(LABEL),
                "webauthn_messages": _messages(self.ctx)}

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = self._user_id()
        if user_id is None:
            return Deny(self.ctx.gettext("Please identify yourself first."))
        credential = rp.parse(response.get("credential"))
        challenge = _take(self.ctx, "register")
        refused = Invalid({"credential": [FieldError("invalid", self.ctx.gettext(
            "The security key or passkey was not accepted."))]})
        if credential is None or challenge is None:
            return refused
        try:
            verified = rp.verify_registration(self.ctx.keystage.settings, credential, challenge=challenge,
                                              user_verification=self.config.user_verification)
        except (WebAuthnException, ValueError, KeyError, TypeError):
            return refused
        name = response.get("name")
        name = name.strip()[:MAX_NAME] if isinstance(name, str) and name.strip() else self.ctx.gettext(LABEL)
        transports = (credential.get("response") or {}).get("transports") or []
        try:
            await self.ctx.keystage.pool.execute(
                """INSERT INTO authenticator_webauthn_credentials
                   (user_id, name, credential_id, public_key, sign_count, transports, aaguid, discoverable, backed_up)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
                user_id, name, verified.credential_id, verified.credential_public_key, verified.sign_count,
                [str(t) for t in transports if isinstance(t, str)][:8], str(verified.aaguid),
                self.config.resident_key == "required" or bool((credential.get("clientExtensionResults") or {})
                                                                .get("credProps", {}).get("rk")),
                bool(verified.credential_backed_up))
        except asyncpg.UniqueViolationError:
            return refused  # already registered (to this user or another)
        self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), "webauthn"])
        return Continue()


class PasskeyLoginConfig(StageConfig):
    user_verification: Requirement = "required"


class PasskeyLoginStage(Stage):
    """Sign in with a passkey alone: the authenticator says who the user is."""

    type_name = "webauthn_login"
    Config = PasskeyLoginConfig
    template = "webauthn_login.html"
    template_folder = Path(__file__).parent / "templates"
    needs_javascript = True

    config: PasskeyLoginConfig

    async def challenge(self) -> dict[str, Any]:
        return await DEVICES.login_challenge(self.ctx, self.config.user_verification)

    async def submit(self, response: Mapping[str, Any]) -> StageResult:
        user_id = await DEVICES.login(self.ctx, response.get("passkey"), self.config.user_verification)
        user = await self.ctx.keystage.users.get(user_id) if user_id else None
        if user is None or not user.is_active:
            return Invalid({"passkey": [FieldError("invalid", self.ctx.gettext(
                "The security key or passkey was not accepted."))]})
        self.ctx.plan.set(PENDING_USER, user.id)
        self.ctx.plan.set(PENDING_IDENTIFIER, user.username)
        if "webauthn" not in (self.ctx.plan.get(AUTHENTICATED_BY) or []):
            self.ctx.plan.set(AUTHENTICATED_BY, [*(self.ctx.plan.get(AUTHENTICATED_BY) or []), "webauthn"])
        return Continue()


@hookimpl
def register_stage_types() -> list[type[Stage]]:
    return [WebAuthnSetupStage, PasskeyLoginStage]


@hookimpl
def register_migrations() -> Path:
    return Path(__file__).parent / "sql"


__all__ = ["DEVICES", "PasskeyLoginStage", "WebAuthnDevices", "WebAuthnSetupStage"]
