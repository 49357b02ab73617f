"""Signing keys: created on first need, encrypted at rest, loaded once per process, rotated with overlap.

A key is published in JWKS from the moment it is stored, signs from ``signs_from`` (a rotated
key is stored ahead of use, so relying parties that cache JWKS see it before any token signed
with it), and leaves JWKS at ``retire_at`` (when the last token it signed has expired).

Private keys are sealed (``keystage.engine.sealing``: AES-256-GCM, a key derived from ``KEYSTAGE_SECRET_KEY``):
a database dump alone does not give them away. Parsing a PEM RSA key costs ~40 ms, so each
process keeps the parsed key objects and only asks the database which keys exist (cheap) at
most every ``REFRESH`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

from keystage.engine.sealing import SealedBox

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

STATE_KEY = "oidc_keys"
REFRESH = 30.0
ADVISORY_LOCK = 0x6F696463  # "oidc"


@dataclasses.dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    key: Any  # joserfc RSAKey / ECKey with the private part
    public_jwk: dict[str, Any]
    signs_from: float
    retire_at: float | None


def _box(secret_key: str) -> SealedBox:
    return SealedBox(secret_key, info=b"keystage oidc signing keys", associated_data=b"oidc-signing-key")


def generate(alg: str) -> tuple[bytes, dict[str, Any], Any]:
    """A new private key as PKCS#8 DER, its public JWK, and the joserfc key object."""
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    kid = secrets.token_urlsafe(12)
    key = (ECKey if alg == "ES256" else RSAKey).import_key(private, {"kid": kid, "alg": alg, "use": "sig"})
    public = key.as_dict(private=False)
    return der, public, key


class KeyRing:
    """This process's parsed keys. ``signing_key(alg)`` and ``jwks()`` are what requests use."""

    def __init__(self, keystage: Keystage) -> None:
        self.keystage = keystage
        self.keys: dict[str, SigningKey] = {}
        self.checked = 0.0
        self._lock = asyncio.Lock()
        self._box = _box(keystage.settings.secret_key)

    async def refresh(self, force: bool = False, db: Any = None) -> None:
        """Re-read which keys exist (at most every REFRESH s). ``db``: a connection the caller holds, so
        that a request holding one never waits for a second (a pool of N and N waiting requests would
        deadlock)."""
        if not force and time.monotonic() - self.checked < REFRESH:
            return
        async with self._lock:
            if not force and time.monotonic() - self.checked < REFRESH:
                return
            rows = await (db or self.keystage.pool).fetch(
                """SELECT kid, alg, public_jwk, extract(epoch FROM signs_from) AS signs_from,
                          extract(epoch FROM retire_at) AS retire_at,
                          CASE WHEN kid = ANY($1::text[]) THEN NULL ELSE private_key END AS private_key
                   FROM oidc_signing_keys WHERE retire_at IS NULL OR retire_at > now()""",
                list(self.keys))
            fresh: dict[str, SigningKey] = {}
            for row in rows:
                known = self.keys.get(row["kid"])
                if known is None:
                    der = self._decrypt(row["private_key"])
                    private = serialization.load_der_private_key(der, password=None)
                    cls = ECKey if row["alg"] == "ES256" else RSAKey
                    key = cls.import_key(private, {"kid": row["kid"], "alg": row["alg"], "use": "sig"})
                else:
                    key = known.key
                public = row["public_jwk"]
                fresh[row["kid"]] = SigningKey(row["kid"], row["alg"], key,
                                               json.loads(public) if isinstance(public, str) else public,
                                               float(row["signs_from"]),
                                               float(row["retire_at"]) if row["retire_at"] is not None else None)
            self.keys = fresh
            self.checked = time.monotonic()

    def _decrypt(self, blob: bytes) -> bytes:
        return self._box.open(blob)

    def encrypt(self, der: bytes) -> bytes:
        return self._box.seal(der)

    async def signing_key(self, alg: str, db: Any = None) -> SigningKey:
        """The newest key of ``alg`` whose signing time has come; one is created if there is none."""
        await self.refresh(db=db)
        key = self._current(alg)
        if key is None:
            await self.create(alg, signs_from_now=True, only_if_missing=True, db=db)
            await self.refresh(force=True, db=db)
            key = self._current(alg)
        assert key is not None
        return key

    def _current(self, alg: str) -> SigningKey | None:
        now = time.time()
        usable = [k for k in self.keys.values() if k.alg == alg and k.signs_from <= now]
        return max(usable, key=lambda k: k.signs_from, default=None)

    def verification_key(self, kid: str) -> SigningKey | None:
        return self.keys.get(kid)

    async def jwks(self) -> dict[str, Any]:
        await self.refresh()
        return {"keys": [k.public_jwk for k in sorted(self.keys.values(), key=lambda k: (k.alg, -k.signs_from))]}

    async def create(self, alg: str, *, signs_from_now: bool, only_if_missing: bool = False,
                     publish_ahead: int = 0, retire_old_after: int = 0, db: Any = None) -> str | None:
        der, public, _ = generate(alg)
        held = contextlib.nullcontext(db) if db is not None else self.keystage.pool.acquire()
        async with held as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK)
            if only_if_missing and await conn.fetchval(
                    "SELECT 1 FROM oidc_signing_keys WHERE alg = $1 AND signs_from <= now()"
                    " AND (retire_at IS NULL OR retire_at > now())", alg):
                return None
            signs_from = 0 if signs_from_now else publish_ahead
            if not only_if_missing:
                await conn.execute(
                    """UPDATE oidc_signing_keys SET retire_at = now() + make_interval(secs => $2)
                       WHERE alg = $1 AND retire_at IS NULL""",
                    alg, float(signs_from + retire_old_after))
            await conn.execute(
                """INSERT INTO oidc_signing_keys (kid, alg, private_key, public_jwk, signs_from)
                   VALUES ($1, $2, $3, $4::jsonb, now() + make_interval(secs => $5))""",
                public["kid"], alg, self.encrypt(der), json.dumps(public), float(signs_from))
        self.checked = 0.0
        return str(public["kid"])


def keyring(keystage: Keystage) -> KeyRing:
    ring = keystage.state.get(STATE_KEY)
    if ring is None:
        ring = keystage.state[STATE_KEY] = KeyRing(keystage)
    return ring


async def longest_token_lifetime(keystage: Keystage) -> int:
    """The longest access or ID token lifetime of any OIDC provider (what an old key must outlive)."""
    value = await keystage.pool.fetchval(
        """SELECT max(greatest(coalesce((config ->> 'access_token_lifetime')::int, 600),
                               coalesce((config ->> 'id_token_lifetime')::int, 600)))
           FROM providers WHERE type = 'oidc'""")
    return int(value or 600)


async def rotate(keystage: Keystage, alg: str, *, publish_ahead: int) -> str:
    """Store a new ``alg`` key that signs ``publish_ahead`` seconds from now; the old ones stay in
    JWKS until the tokens they signed have expired. Returns the new key's ``kid``."""
    retire_after = await longest_token_lifetime(keystage) + 60
    kid = await keyring(keystage).create(alg, signs_from_now=False, publish_ahead=publish_ahead,
                                         retire_old_after=retire_after)
    assert kid is not None
    return kid
