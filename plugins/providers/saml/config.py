"""The SAML provider type and its configuration (``model: provider``, ``type: saml`` in blueprints).

What the service provider (SP) is — its entity id, where it receives assertions (ACS URLs, an exact
allow-list), its single-logout URL and certificates — comes from its metadata (``sp_metadata``, XML,
or ``sp_metadata_url``, fetched when the blueprint is applied) or from the fields themselves; a field
given explicitly wins over the metadata.
"""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any, Literal

import pydantic

from keystage.engine.applications import ProviderConfig, ProviderType
from keystage.engine.sandbox import ExpressionError, check

from . import metadata

SIGNATURE_ALGORITHMS = {
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "rsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "rsa-sha512": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
}
DIGEST_ALGORITHMS = {
    "sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
    "sha384": "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "sha512": "http://www.w3.org/2001/04/xmlenc#sha512",
    "sha1": "http://www.w3.org/2000/09/xmldsig#sha1",
}
NAME_ID_FORMATS = {
    "persistent": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
    "email": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
    "transient": "urn:oasis:names:tc:SAML:2.0:nameid-format:transient",
    "unspecified": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
}
# XML Encryption of assertions: (EncryptionMethod, xmlsec1 session key). GCM by default: CBC in
# XML Encryption is open to padding-oracle attacks (Jager and Somorovsky, 2011) where an SP answers
# decryption failures differently; CBC only for SPs that cannot do GCM.
ENCRYPTION_ALGORITHMS = {
    "aes256-gcm": ("http://www.w3.org/2009/xmlenc11#aes256-gcm", "aes-256"),
    "aes128-gcm": ("http://www.w3.org/2009/xmlenc11#aes128-gcm", "aes-128"),
    "aes256-cbc": ("http://www.w3.org/2001/04/xmlenc#aes256-cbc", "aes-256"),
    "aes128-cbc": ("http://www.w3.org/2001/04/xmlenc#aes128-cbc", "aes-128"),
}
METADATA_FETCH_TIMEOUT = 10.0
METADATA_MAX_BYTES = 1024 * 1024


def _absolute_http(url: str, field: str) -> str:
    if not (url.startswith("https://") or url.startswith("http://")) or "#" in url:
        raise ValueError(f"{field}: must be an absolute http(s) URL without a fragment")
    return url


class SAMLConfig(ProviderConfig):
    sp_entity_id: str
    # Where assertions may be sent (HTTP-POST binding): exact strings. The first is the default
    # (IdP-initiated sign-in, and requests that name no URL).
    acs_urls: list[str] = pydantic.Field(default_factory=list)
    # The SP's single-logout endpoint and the binding it wants there.
    slo_url: str | None = None
    slo_binding: Literal["redirect", "post"] = "redirect"
    # PEM certificates: the SP's signing certificate (checks signed requests) and its encryption
    # certificate (assertion encryption). From the metadata when not given.
    sp_signing_certificate: str | None = None
    sp_encryption_certificate: str | None = None
    sp_metadata: str | None = None
    sp_metadata_url: str | None = None
    name_id_format: Literal["persistent", "email", "transient", "unspecified"] = "persistent"
    signed: Literal["assertion", "response", "both"] = "assertion"
    signature_algorithm: Literal["rsa-sha256", "rsa-sha384", "rsa-sha512", "rsa-sha1"] = "rsa-sha256"
    digest_algorithm: Literal["sha256", "sha384", "sha512", "sha1"] = "sha256"
    # SHA-1 is broken for signatures: used (and accepted on requests) only when an admin says so here.
    allow_sha1: bool = False
    encrypt_assertions: bool = False
    encryption_algorithm: Literal["aes256-gcm", "aes128-gcm", "aes256-cbc", "aes128-cbc"] = "aes256-gcm"
    want_authn_requests_signed: bool = False
    # Send the default attributes (username, name, email, groups) besides the mappings.
    default_attributes: bool = True
    # {attribute name: expression returning a value or a list of values}; None leaves it out.
    attribute_mappings: dict[str, str] = pydantic.Field(default_factory=dict)
    attribute_name_format: Literal["basic", "uri", "unspecified"] = "basic"
    authorization_flow: str = "default-provider-authorization-implicit-consent"
    idp_initiated: bool = True
    default_relay_state: str | None = None
    # SessionNotOnOrAfter: how long the SP may keep the user signed in on this assertion.
    session_lifetime: int = pydantic.Field(default=8 * 3600, ge=60, le=30 * 86400)
    # How long the assertion itself is valid (Conditions/NotOnOrAfter).
    assertion_lifetime: int = pydantic.Field(default=300, ge=30, le=3600)
    # Clock difference tolerated on what we receive (IssueInstant of requests).
    clock_skew: int = pydantic.Field(default=90, ge=0, le=600)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_metadata(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("sp_metadata"):
            return data
        try:
            found = metadata.parse_sp_metadata(str(data["sp_metadata"]), data.get("sp_entity_id"))
        except metadata.MetadataError as exc:
            raise ValueError(f"sp_metadata: {exc}") from None
        merged = dict(data)
        for key, value in found.items():
            if merged.get(key) in (None, [], "") and value not in (None, []):
                merged[key] = value
        return merged

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> SAMLConfig:
        if not self.sp_entity_id.strip():
            raise ValueError("sp_entity_id: must not be empty")
        if not self.acs_urls:
            raise ValueError("acs_urls: at least one assertion consumer service URL (or sp_metadata with one)")
        for i, url in enumerate(self.acs_urls):
            _absolute_http(url, f"acs_urls.{i}")
        if self.slo_url:
            _absolute_http(self.slo_url, "slo_url")
        if self.sp_metadata_url:
            _absolute_http(self.sp_metadata_url, "sp_metadata_url")
        for field in ("sp_signing_certificate", "sp_encryption_certificate"):
            value = getattr(self, field)
            if value:
                try:
                    metadata.load_certificate(value)
                except metadata.MetadataError as exc:
                    raise ValueError(f"{field}: {exc}") from None
        if not self.allow_sha1 and "sha1" in (self.signature_algorithm.rsplit("-", 1)[-1], self.digest_algorithm):
            raise ValueError("SHA-1 is refused unless allow_sha1 is true (use rsa-sha256 / sha256)")
        if self.encrypt_assertions and not self.encryption_certificate:
            raise ValueError("encrypt_assertions needs sp_encryption_certificate (or one in sp_metadata)")
        if self.want_authn_requests_signed and not self.sp_signing_certificate:
            raise ValueError("want_authn_requests_signed needs sp_signing_certificate (or one in sp_metadata)")
        for name, source in self.attribute_mappings.items():
            if not name.strip():
                raise ValueError("attribute_mappings: an attribute name must not be empty")
            try:
                check(source)
            except ExpressionError as exc:
                raise ValueError(f"attribute_mappings.{name}: {exc.describe()}") from None
        return self

    @property
    def encryption_certificate(self) -> str | None:
        return self.sp_encryption_certificate or None

    @property
    def sign_response(self) -> bool:
        return self.signed in ("response", "both")

    @property
    def sign_assertion(self) -> bool:
        return self.signed in ("assertion", "both")

    def acs_allowed(self, url: str) -> bool:
        # Exact string match: no prefix, case or normalisation games (the ACS is where the assertion goes).
        return url in self.acs_urls

    def accepted_signature_algorithms(self) -> set[str]:
        accepted = {v for k, v in SIGNATURE_ALGORITHMS.items() if k != "rsa-sha1"}
        if self.allow_sha1:
            accepted.add(SIGNATURE_ALGORITHMS["rsa-sha1"])
        return accepted


def fetch_metadata(url: str) -> str:
    """The SP metadata at ``url`` (at most 1 MiB, 10 s): read when a blueprint is applied."""
    request = urllib.request.Request(url, headers={"Accept": "application/samlmetadata+xml, application/xml"})
    try:
        with urllib.request.urlopen(request, timeout=METADATA_FETCH_TIMEOUT) as answer:  # noqa: S310 (http(s) checked)
            body = answer.read(METADATA_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"sp_metadata_url: cannot be read: {exc}") from None
    if len(body) > METADATA_MAX_BYTES:
        raise ValueError("sp_metadata_url: the document is larger than 1 MiB")
    return body.decode("utf-8", "replace")


class SAMLProvider(ProviderType):
    type_name = "saml"
    Config = SAMLConfig

    @classmethod
    async def resolve_config(cls, raw: dict[str, Any]) -> dict[str, Any]:
        url = raw.get("sp_metadata_url")
        if isinstance(url, str) and url and not raw.get("sp_metadata"):
            _absolute_http(url, "sp_metadata_url")
            raw = {**raw, "sp_metadata": await asyncio.to_thread(fetch_metadata, url)}
        return raw

    @classmethod
    def launch_url(cls, application_slug: str, config: dict[str, Any]) -> str | None:
        return f"/saml/{application_slug}/sso/init" if config.get("idp_initiated", True) else None
