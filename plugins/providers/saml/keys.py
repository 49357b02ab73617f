"""Each SAML provider's signing key and certificate, and the key its persistent NameIDs derive from.

Made on first need (an RSA-2048 key, a self-signed certificate valid for ten years: SPs pin the
certificate from our metadata, so it must not expire under them), sealed at rest, parsed once per
process. pysaml2 signs through the ``xmlsec1`` program, which reads keys from files: each process
writes them to a private temporary directory (mode 0700) that it removes when it stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import os
import secrets
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from keystage.engine.sealing import SealedBox

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

STATE_KEY = "saml_keys"
CERTIFICATE_DAYS = 3650


@dataclasses.dataclass(frozen=True)
class ProviderKeys:
    key_file: str
    cert_file: str
    certificate_pem: str
    pseudonym_key: bytes

    @property
    def certificate_base64(self) -> str:
        return "".join(line for line in self.certificate_pem.splitlines() if "-----" not in line)

    def pseudonym(self, sp_entity_id: str, user_id: int) -> str:
        """The persistent NameID of a user at one SP: stable, and unlinkable across SPs."""
        mac = hmac.new(self.pseudonym_key, f"{sp_entity_id}\x00{user_id}".encode(), hashlib.sha256).hexdigest()
        return "_" + mac[:40]


def _box(keystage: Keystage) -> SealedBox:
    return SealedBox(keystage.settings.secret_key, info=b"keystage saml keys", associated_data=b"saml-key")


def generate(common_name: str) -> tuple[bytes, str]:
    """A new RSA key (PKCS#8 DER) and a self-signed certificate for it (PEM)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "keystage")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .sign(private, hashes.SHA256()))
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return der, cert.public_bytes(serialization.Encoding.PEM).decode()


class KeyStore:
    """This process's keys, by provider id; files in one private directory."""

    def __init__(self, keystage: Keystage) -> None:
        self.keystage = keystage
        self.box = _box(keystage)
        self.loaded: dict[int, ProviderKeys] = {}
        self.directory: str | None = None
        self._lock = asyncio.Lock()

    def _dir(self) -> str:
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="keystage-saml-")  # 0700
        return self.directory

    async def get(self, provider_id: int, common_name: str) -> ProviderKeys:
        found = self.loaded.get(provider_id)
        if found is not None:
            return found
        async with self._lock:
            found = self.loaded.get(provider_id)
            if found is None:
                found = self.loaded[provider_id] = await self._load(provider_id, common_name)
        return found

    async def _load(self, provider_id: int, common_name: str) -> ProviderKeys:
        pool = self.keystage.pool
        row = await pool.fetchrow("SELECT private_key, certificate, pseudonym_key FROM saml_keys WHERE provider_id = $1",
                                  provider_id)
        if row is None:
            der, cert = await asyncio.to_thread(generate, common_name)
            await pool.execute(
                """INSERT INTO saml_keys (provider_id, private_key, certificate, pseudonym_key)
                   VALUES ($1, $2, $3, $4) ON CONFLICT (provider_id) DO NOTHING""",
                provider_id, self.box.seal(der), cert, self.box.seal(secrets.token_bytes(32)))
            row = await pool.fetchrow(
                "SELECT private_key, certificate, pseudonym_key FROM saml_keys WHERE provider_id = $1", provider_id)
        der = self.box.open(row["private_key"])
        private = serialization.load_der_private_key(der, password=None)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        key_file = os.path.join(self._dir(), f"{provider_id}.key")
        cert_file = os.path.join(self._dir(), f"{provider_id}.crt")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        with open(cert_file, "w") as out:
            out.write(row["certificate"])
        return ProviderKeys(key_file, cert_file, row["certificate"], self.box.open(row["pseudonym_key"]))

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        self.loaded.clear()


def key_store(keystage: Keystage) -> KeyStore:
    store = keystage.state.get(STATE_KEY)
    if store is None:
        store = keystage.state[STATE_KEY] = KeyStore(keystage)
    return store


def close(keystage: Keystage) -> None:
    store: Any = keystage.state.pop(STATE_KEY, None)
    if store is not None:
        store.close()
