"""What we accept from SPs, and the checks every request from one passes.

Before pysaml2 reads anything: bounded size, no DTD, no entities.

pysaml2 inflates Redirect-binding messages (and tries to for POST ones) without a size bound, and
defusedxml, which it parses with, refuses entities but lets a DTD through. Each message is decoded
and checked here first; only then does pysaml2 see it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import time
import zlib
from typing import TYPE_CHECKING, Any, Literal
from xml.etree import ElementTree

import defusedxml
import defusedxml.ElementTree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

if TYPE_CHECKING:
    from keystage.engine.kv import KeyValueStore

    from .service_providers import ServiceProvider

MAX_ENCODED = 64 * 1024      # what an SP may send us (base64)
MAX_XML = 256 * 1024         # what that may inflate to


class MessageRefused(ValueError):
    """Not a SAML message we read; ``str()`` says why (for the admin's log, never the page)."""


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(data, MAX_XML + 1)
    except zlib.error as exc:
        raise MessageRefused(f"not DEFLATE data: {exc}") from None
    if len(out) > MAX_XML or inflater.unconsumed_tail:
        raise MessageRefused(f"inflates to more than {MAX_XML} bytes")
    return out


def decode(encoded: str, *, deflated: bool) -> str:
    """The XML of a SAMLRequest/SAMLResponse parameter, checked; raises MessageRefused."""
    if len(encoded) > MAX_ENCODED:
        raise MessageRefused(f"larger than {MAX_ENCODED} bytes")
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=False)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MessageRefused(f"not base64: {exc}") from None
    if deflated or not raw.lstrip().startswith(b"<"):
        raw = _inflate(raw)
    try:
        xml = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageRefused("not UTF-8") from None
    check_xml(xml)
    return xml


def check_xml(xml: str) -> None:
    """Refuse DTDs (and so entity declarations, internal or external) and malformed XML."""
    try:
        defusedxml.ElementTree.fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise MessageRefused(f"forbidden XML construct: {type(exc).__name__}") from None
    except Exception as exc:  # ParseError and friends
        raise MessageRefused(f"not well-formed XML: {exc}") from None


def for_pysaml2(xml: str) -> str:
    """The checked XML, encoded the way pysaml2's POST unravelling reads without inflating."""
    return base64.b64encode(xml.encode("utf-8")).decode("ascii")


# -- requests from the SP ----------------------------------------------------------------------

REQUEST_MAX_AGE = 300  # seconds a request may travel before it reaches us (plus the clock skew)
NS = {"ds": "http://www.w3.org/2000/09/xmldsig#"}


class Refused(Exception):
    """A request we do not act on; ``str()`` is for the admin's log, never for the page."""


def signature_structure(xml: str, *, required: bool) -> str | None:
    """The algorithm of an enveloped signature over the root element, or None when unsigned.

    Refuses anything but exactly one ``ds:Signature``, a direct child of the root, whose one
    Reference points at the root's own ID, which appears once: the shapes signature-wrapping
    attacks need (a signed element elsewhere, a second element with the signed ID) stop here,
    before xmlsec1 checks the signature value itself.
    """
    root = ElementTree.fromstring(xml)  # check_xml has refused DTDs and entities already
    every = root.findall(".//ds:Signature", NS)
    direct = root.findall("ds:Signature", NS)
    if not every:
        if required:
            raise Refused("the request is not signed, and this provider requires signed requests")
        return None
    if len(every) != 1 or len(direct) != 1:
        raise Refused("a signature that is not one enveloped signature over the request")
    root_id = root.get("ID")
    references = direct[0].findall("ds:SignedInfo/ds:Reference", NS)
    if not root_id or len(references) != 1 or references[0].get("URI") != f"#{root_id}":
        raise Refused("the signature does not cover the request element")
    if sum(1 for element in root.iter() if element.get("ID") == root_id) != 1:
        raise Refused("two elements carry the signed ID")
    method = direct[0].find("ds:SignedInfo/ds:SignatureMethod", NS)
    return method.get("Algorithm") if method is not None else None


def _instant(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def read_request(sp: ServiceProvider, kv: KeyValueStore, kind: Literal["authn", "logout"], *, binding: str,
                       saml_request: str, relay_state: str | None, sigalg: str | None,
                       signature: str | None) -> Any:
    """The pysaml2 message of an AuthnRequest or LogoutRequest that passed every check; raises Refused.

    Checked, whatever pysaml2 also checks: size and no DTD; a signature when the provider wants
    one (Redirect: in the query; POST: one enveloped signature over the request) with an accepted
    algorithm, verified by pysaml2 against the SP's certificate; the issuer is the provider's SP;
    the Destination is our endpoint (required when signed); IssueInstant within
    ``REQUEST_MAX_AGE`` and the clock-skew bound; the ID never seen before (replay).
    """
    config = sp.config
    redirect = binding == "redirect"
    try:
        xml = decode(saml_request, deflated=redirect)
    except MessageRefused as exc:
        raise Refused(f"SAMLRequest: {exc}") from None
    if redirect:
        if signature_structure(xml, required=False) is not None:
            raise Refused("a Redirect-binding request carries its signature in the query, not in the XML")
        if config.want_authn_requests_signed and not (sigalg and signature):
            raise Refused("the request is not signed, and this provider requires signed requests")
        algorithm = sigalg if signature else None
    else:
        algorithm = signature_structure(xml, required=config.want_authn_requests_signed)
    if algorithm is not None and algorithm not in config.accepted_signature_algorithms():
        raise Refused(f"signature algorithm {algorithm} is not accepted (SHA-1 needs allow_sha1)")
    parse = sp.server.parse_authn_request if kind == "authn" else sp.server.parse_logout_request
    try:
        parsed = await asyncio.to_thread(
            parse, saml_request if redirect else for_pysaml2(xml),
            BINDING_HTTP_REDIRECT if redirect else BINDING_HTTP_POST, relay_state=relay_state,
            sigalg=sigalg if redirect else None, signature=signature if redirect else None)
    except Exception as exc:  # pysaml2 raises many kinds; each one is a refusal
        raise Refused(f"pysaml2 refused the request: {type(exc).__name__}: {exc}") from None
    message = parsed.message if parsed is not None else None
    if message is None:
        raise Refused("pysaml2 could not read the request")
    issuer = message.issuer.text.strip() if message.issuer is not None and message.issuer.text else None
    if issuer != config.sp_entity_id:
        raise Refused(f"issuer {issuer!r} is not this provider's SP ({config.sp_entity_id!r})")
    endpoint = sp.urls["sso" if kind == "authn" else "slo"]
    if message.destination is None and algorithm is not None:
        raise Refused("a signed request must name its Destination")  # SAML bindings 3.4.5.2, 3.5.5.2
    if message.destination is not None and message.destination != endpoint:
        raise Refused(f"destination {message.destination!r} is not {endpoint!r}")
    try:
        issued = _instant(message.issue_instant)
    except (TypeError, ValueError):
        raise Refused(f"IssueInstant {message.issue_instant!r} is not a time") from None
    now = time.time()
    if issued > now + config.clock_skew or issued < now - REQUEST_MAX_AGE - config.clock_skew:
        raise Refused(f"IssueInstant {message.issue_instant} is outside the accepted window")
    if not message.id:
        raise Refused("the request has no ID")
    ttl = REQUEST_MAX_AGE + 2 * config.clock_skew + 60  # longer than the window: a replay is refused either way
    if await kv.incr(f"saml:{kind}:{sp.provider_id}:{message.id}", ttl=ttl) != 1:
        raise Refused(f"request {message.id} was already used (replay)")
    return message
