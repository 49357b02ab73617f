"""The relying party's side of WebAuthn on py_webauthn: options to send, responses to verify.

Thin and stateless: the stage keeps the challenge in the plan and persists credentials. The RP id is
the host of ``KEYSTAGE_EXTERNAL_URL`` and the only accepted origin is that URL's origin (WebAuthn
Level 2, sections 5.1.3 step 9 and 7.1 step 9).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import webauthn
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.structs import (AttestationConveyancePreference, AuthenticatorAttachment,
                                      AuthenticatorSelectionCriteria, AuthenticatorTransport,
                                      PublicKeyCredentialDescriptor, ResidentKeyRequirement,
                                      UserVerificationRequirement)

if TYPE_CHECKING:
    from keystage.engine.config import Settings

TIMEOUT_MS = 120_000


def rp_id(settings: Settings) -> str:
    return urlsplit(settings.external_url).hostname or "localhost"


def origin(settings: Settings) -> str:
    parts = urlsplit(settings.external_url)
    return f"{parts.scheme}://{parts.netloc}"


def user_handle(settings: Settings, user_id: int) -> bytes:
    """The WebAuthn user id: opaque and stable, never the database id (section 14.6.1), so no table."""
    return hmac.new(settings.secret_key.encode(), f"webauthn user {user_id}".encode(), hashlib.sha256).digest()


def new_challenge() -> bytes:
    return secrets.token_bytes(32)


def _descriptors(credentials: list[tuple[bytes, list[str]]]) -> list[PublicKeyCredentialDescriptor]:
    known = {t.value for t in AuthenticatorTransport}
    return [PublicKeyCredentialDescriptor(id=cid, transports=[AuthenticatorTransport(t) for t in ts if t in known])
            for cid, ts in credentials]


def registration_options(settings: Settings, *, rp_name: str, user_id: int, username: str, display_name: str,
                         challenge: bytes, existing: list[tuple[bytes, list[str]]], resident_key: str,
                         user_verification: str, attachment: str | None, attestation: str) -> dict[str, Any]:
    options = webauthn.generate_registration_options(
        rp_id=rp_id(settings), rp_name=rp_name, user_id=user_handle(settings, user_id), user_name=username,
        user_display_name=display_name or username, challenge=challenge, timeout=TIMEOUT_MS,
        attestation=AttestationConveyancePreference(attestation),
        authenticator_selection=AuthenticatorSelectionCriteria(
            authenticator_attachment=AuthenticatorAttachment(attachment) if attachment else None,
            resident_key=ResidentKeyRequirement(resident_key),
            user_verification=UserVerificationRequirement(user_verification),
        ),
        exclude_credentials=_descriptors(existing),
    )
    return json.loads(webauthn.options_to_json(options))  # type: ignore[no-any-return]


def authentication_options(settings: Settings, *, challenge: bytes, allowed: list[tuple[bytes, list[str]]],
                           user_verification: str) -> dict[str, Any]:
    options = webauthn.generate_authentication_options(
        rp_id=rp_id(settings), challenge=challenge, timeout=TIMEOUT_MS, allow_credentials=_descriptors(allowed),
        user_verification=UserVerificationRequirement(user_verification))
    return json.loads(webauthn.options_to_json(options))  # type: ignore[no-any-return]


def verify_registration(settings: Settings, credential: Any, *, challenge: bytes, user_verification: str) -> Any:
    """py_webauthn's ``VerifiedRegistration``; raises ``webauthn.helpers.exceptions.WebAuthnException``."""
    return webauthn.verify_registration_response(
        credential=credential, expected_challenge=challenge, expected_rp_id=rp_id(settings),
        expected_origin=origin(settings), require_user_verification=user_verification == "required")


def verify_authentication(settings: Settings, credential: Any, *, challenge: bytes, public_key: bytes,
                          sign_count: int, user_verification: str) -> Any:
    """py_webauthn's ``VerifiedAuthentication`` (it refuses a sign count that did not grow)."""
    return webauthn.verify_authentication_response(
        credential=credential, expected_challenge=challenge, expected_rp_id=rp_id(settings),
        expected_origin=origin(settings), credential_public_key=public_key,
        credential_current_sign_count=sign_count, require_user_verification=user_verification == "required")


def parse(raw: Any) -> dict[str, Any] | None:
    """A credential from the client: a JSON object or its text; None when it is neither."""
    if isinstance(raw, str):
        if len(raw) > 64_000:
            return None
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, dict) else None


def credential_id(credential: dict[str, Any]) -> bytes | None:
    raw = credential.get("rawId") or credential.get("id")
    if not isinstance(raw, str):
        return None
    try:
        return base64url_to_bytes(raw)
    except ValueError:
        return None


__all__ = ["authentication_options", "base64url_to_bytes", "bytes_to_base64url", "credential_id", "new_challenge",
           "origin", "parse", "registration_options", "rp_id", "user_handle", "verify_authentication",
           "verify_registration"]
