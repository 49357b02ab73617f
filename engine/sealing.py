"""Secrets at rest: AES-256-GCM with a key derived (HKDF-SHA256) from ``KEYSTAGE_SECRET_KEY``.

Plugins that keep private keys in the database (OIDC signing keys, SAML certificates) seal them
with a ``SealedBox`` of their own ``purpose``: a database dump alone gives nothing away, and a blob
sealed for one purpose does not open for another (the purpose is the HKDF info and the GCM
associated data). The stored form is ``nonce (12 bytes) || ciphertext``.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SealedBox:
    def __init__(self, secret_key: str, *, info: bytes, associated_data: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret_key.encode())
        self._aead = AESGCM(derived)
        self._ad = associated_data

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, self._ad)

    def open(self, blob: bytes) -> bytes:
        """The plaintext; ``cryptography.exceptions.InvalidTag`` when the blob or the secret key differs."""
        return self._aead.decrypt(blob[:12], blob[12:], self._ad)
