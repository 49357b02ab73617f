"""TOTP (RFC 6238) on cryptography's implementation: new secrets, the otpauth URI, checking a code.

Small functions that store nothing; the stage persists what they return.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.totp import TOTP

DIGITS = 6
PERIOD = 30
# RFC 6238 section 5.2: accept one step either side for clock drift and typing time.
WINDOW = 1
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA1 block the RFC recommends (RFC 4226 section 4)


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def b32(secret: bytes) -> str:
    """The secret as authenticator apps take it: base32 without padding."""
    return base64.b32encode(secret).decode().rstrip("=")


def _totp(secret: bytes) -> TOTP:
    # SHA-1 is what every authenticator app implements for TOTP; HMAC-SHA1 is not weakened by SHA-1 collisions.
    return TOTP(secret, DIGITS, SHA1(), PERIOD, enforce_key_length=False)  # noqa: S303


def provisioning_uri(secret: bytes, *, account: str, issuer: str) -> str:
    """The ``otpauth://totp/`` URI of the Key Uri Format that authenticator apps scan."""
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode({"secret": b32(secret), "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
                       "period": PERIOD})
    return f"otpauth://totp/{label}?{query}"


def code_at(secret: bytes, when: float) -> str:
    return _totp(secret).generate(int(when)).decode()


def matching_step(secret: bytes, code: str, *, now: float) -> int | None:
    """The time step (``now // 30``, give or take ``WINDOW``) whose code is ``code``, or None."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = _totp(secret)
    step = int(now) // PERIOD
    found = None
    # Check every step of the window (no early exit): the time taken says nothing about which matched.
    for candidate in range(step - WINDOW, step + WINDOW + 1):
        if hmac.compare_digest(totp.generate(candidate * PERIOD).decode(), code):
            found = candidate
    return found
