"""SAML metadata: reading an SP's (what it is, where it listens, its certificates) and writing
the description of an SP that pysaml2 needs when an admin configured the SP by hand.

SP metadata is parsed by pysaml2's schema classes, which read XML through defusedxml (no DTDs,
no entity expansion, no external references).
"""

from __future__ import annotations

import base64
import textwrap
from typing import Any
from xml.sax.saxutils import quoteattr

from cryptography import x509
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, md


class MetadataError(ValueError):
    pass


BINDINGS = {"redirect": BINDING_HTTP_REDIRECT, "post": BINDING_HTTP_POST}


def load_certificate(text: str) -> x509.Certificate:
    """A certificate from PEM, or from the bare base64 of metadata's ``X509Certificate``."""
    body = text.strip()
    if "-----BEGIN CERTIFICATE-----" not in body:
        body = "-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap("".join(body.split()), 64)) + \
               "\n-----END CERTIFICATE-----\n"
    try:
        return x509.load_pem_x509_certificate(body.encode())
    except ValueError as exc:
        raise MetadataError(f"not an X.509 certificate ({exc})") from None


def certificate_base64(text: str) -> str:
    """The DER of a certificate as one base64 line (what ``X509Certificate`` elements hold)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return base64.b64encode(load_certificate(text).public_bytes(Encoding.DER)).decode()


def _pem(b64: str) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return load_certificate(b64).public_bytes(Encoding.PEM).decode()


def parse_sp_metadata(xml: str, entity_id: str | None = None) -> dict[str, Any]:
    """What SAMLConfig takes from an SP's metadata: sp_entity_id, acs_urls (HTTP-POST ones, by
    index, default first), slo_url/slo_binding, sp_signing_certificate, sp_encryption_certificate,
    want_authn_requests_signed (when the SP says it signs them)."""
    try:
        if "EntitiesDescriptor" in xml.split(">", 2)[0] + xml[:400]:
            group = md.entities_descriptor_from_string(xml)
            entities = list(group.entity_descriptor) if group is not None else []
        else:
            one = md.entity_descriptor_from_string(xml)
            entities = [one] if one is not None else []
    except Exception as exc:  # defusedxml refusals, syntax errors, schema mismatches
        raise MetadataError(f"not readable SAML metadata ({type(exc).__name__}: {exc})") from None
    entities = [e for e in entities if e.spsso_descriptor]
    if entity_id:
        entities = [e for e in entities if e.entity_id == entity_id]
    if not entities:
        raise MetadataError("no SPSSODescriptor" + (f" for entity {entity_id!r}" if entity_id else ""))
    if len(entities) > 1:
        raise MetadataError("several service providers: set sp_entity_id to choose one")
    entity = entities[0]
    sp = entity.spsso_descriptor[0]
    services = [s for s in sp.assertion_consumer_service if s.binding == BINDING_HTTP_POST]
    if not services:
        raise MetadataError("no AssertionConsumerService with the HTTP-POST binding")
    services.sort(key=lambda s: (s.is_default != "true", int(s.index or 0)))
    found: dict[str, Any] = {"sp_entity_id": entity.entity_id, "acs_urls": [s.location for s in services]}
    for binding_name, binding in (("redirect", BINDING_HTTP_REDIRECT), ("post", BINDING_HTTP_POST)):
        slo = [s for s in sp.single_logout_service if s.binding == binding]
        if slo and "slo_url" not in found:
            found["slo_url"], found["slo_binding"] = slo[0].location, binding_name
    for descriptor in sp.key_descriptor:
        try:
            cert = descriptor.key_info.x509_data[0].x509_certificate.text
        except (AttributeError, IndexError):
            continue
        pem = _pem(cert)
        if descriptor.use in (None, "", "signing"):
            found.setdefault("sp_signing_certificate", pem)
        if descriptor.use in (None, "", "encryption"):
            found.setdefault("sp_encryption_certificate", pem)
    if sp.authn_requests_signed == "true":
        found["want_authn_requests_signed"] = True
    return found


def sp_metadata_xml(config: Any) -> str:
    """The SP as pysaml2's metadata store wants it, from the provider's configuration (which is
    authoritative: an ACS URL removed from the config is gone even if the imported metadata had it)."""
    parts = [f'<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
             f'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID={quoteattr(config.sp_entity_id)}>',
             '<md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"'
             f' AuthnRequestsSigned="{"true" if config.want_authn_requests_signed else "false"}">']
    for use, cert in (("signing", config.sp_signing_certificate), ("encryption", config.sp_encryption_certificate)):
        if cert:
            parts.append(f'<md:KeyDescriptor use="{use}"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
                         f'{certificate_base64(cert)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>'
                         '</md:KeyDescriptor>')
    if config.slo_url:
        parts.append(f'<md:SingleLogoutService Binding="{BINDINGS[config.slo_binding]}" '
                     f'Location={quoteattr(config.slo_url)}/>')
    for index, url in enumerate(config.acs_urls):
        default = ' isDefault="true"' if index == 0 else ""
        parts.append(f'<md:AssertionConsumerService Binding="{BINDING_HTTP_POST}" Location={quoteattr(url)} '
                     f'index="{index}"{default}/>')
    parts.append("</md:SPSSODescriptor></md:EntityDescriptor>")
    return "".join(parts)
