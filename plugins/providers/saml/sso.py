"""Single sign-on: reading an AuthnRequest and making the Response.

An AuthnRequest passes ``messages.read_request`` (size, no DTD, issuer, signature, destination,
IssueInstant, replay), then: its ACS URL (or index) is on the provider's allow-list, and it asks
for the HTTP-POST binding (or none).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
import time
from typing import TYPE_CHECKING, Any

from saml2 import BINDING_HTTP_POST
from saml2.authn_context import PASSWORDPROTECTEDTRANSPORT
from saml2.s_utils import UnknownPrincipal, UnsupportedBinding
from saml2.saml import NameID
from saml2.sigver import SignatureError

from . import messages
from .config import NAME_ID_FORMATS, SIGNATURE_ALGORITHMS
from .messages import Refused

if TYPE_CHECKING:
    from saml2.server import Server

    from keystage.engine.kv import KeyValueStore

    from .config import SAMLConfig
    from .keys import ProviderKeys
    from .service_providers import ServiceProvider

log = logging.getLogger("keystage.saml")



@dataclasses.dataclass(frozen=True)
class AuthnRequest:
    id: str | None          # None: IdP-initiated (unsolicited)
    acs_url: str
    relay_state: str | None
    force_authn: bool = False
    is_passive: bool = False


async def parse_authn_request(sp: ServiceProvider, kv: KeyValueStore, *, binding: str, saml_request: str,
                              relay_state: str | None, sigalg: str | None, signature: str | None) -> AuthnRequest:
    message = await messages.read_request(sp, kv, "authn", binding=binding, saml_request=saml_request,
                                          relay_state=relay_state, sigalg=sigalg, signature=signature)
    if message.protocol_binding not in (None, BINDING_HTTP_POST):
        raise Refused(f"ProtocolBinding {message.protocol_binding} is not supported (HTTP-POST only)")
    return AuthnRequest(id=message.id, acs_url=_acs_url(sp.config, message), relay_state=relay_state,
                        force_authn=str(message.force_authn).lower() in ("true", "1"),
                        is_passive=str(message.is_passive).lower() in ("true", "1"))


def _acs_url(config: SAMLConfig, message: Any) -> str:
    if message.assertion_consumer_service_url:
        url = message.assertion_consumer_service_url
        if not config.acs_allowed(url):
            raise Refused(f"AssertionConsumerServiceURL {url!r} is not registered for this SP")
        return url
    if message.assertion_consumer_service_index is not None:
        try:
            return config.acs_urls[int(message.assertion_consumer_service_index)]
        except (ValueError, IndexError):
            raise Refused(f"AssertionConsumerServiceIndex {message.assertion_consumer_service_index} is unknown") \
                from None
    return config.acs_urls[0]


def name_id(config: SAMLConfig, keys: ProviderKeys, user: Any) -> NameID | None:
    """The subject's NameID in the provider's format; None when the user has no value for it."""
    import secrets

    if config.name_id_format == "persistent":
        value = keys.pseudonym(config.sp_entity_id, user.id)
    elif config.name_id_format == "email":
        value = user.email
    elif config.name_id_format == "transient":
        value = "_" + secrets.token_hex(20)
    else:
        value = user.username
    if not value:
        return None
    return NameID(format=NAME_ID_FORMATS[config.name_id_format], text=value,
                  sp_name_qualifier=config.sp_entity_id if config.name_id_format == "persistent" else None)


def make_response(server: Server, config: SAMLConfig, request: AuthnRequest, subject: NameID,
                  attributes: dict[str, list[str]], *, auth_time: float) -> str:
    """The signed (and, if configured, encrypted) Response, base64-encoded for the POST binding.
    Synchronous: pysaml2 runs xmlsec1 for each signature (callers use a thread)."""
    session_end = datetime.datetime.fromtimestamp(time.time() + config.session_lifetime, datetime.timezone.utc)
    authn = {"class_ref": PASSWORDPROTECTEDTRANSPORT,
             "authn_instant": int(auth_time)}
    try:
        response = server.create_authn_response(
            attributes, request.id, request.acs_url, config.sp_entity_id, name_id=subject, authn=authn,
            sign_response=config.sign_response, sign_assertion=config.sign_assertion,
            encrypt_assertion=config.encrypt_assertions,
            # Not "self-contained": that renames the assertion's prefixes, and an SP decrypting it
            # in place (xmlsec, python3-saml) reconciles them back to the Response's, which changes
            # the exclusive-c14n form and breaks the assertion's signature.
            encrypt_assertion_self_contained=False,
            encrypt_cert_assertion=config.encryption_certificate if config.encrypt_assertions else None,
            sign_alg=SIGNATURE_ALGORITHMS[config.signature_algorithm],
            digest_alg=server.config.digest_algorithm,
            session_not_on_or_after=session_end.strftime("%Y-%m-%dT%H:%M:%SZ"))
    except (SignatureError, UnknownPrincipal, UnsupportedBinding, OSError) as exc:
        raise Refused(f"the response could not be made: {type(exc).__name__}: {exc}") from None
    return base64.b64encode(str(response).encode("utf-8")).decode("ascii")


def make_error_response(server: Server, config: SAMLConfig, request: AuthnRequest, status: str, text: str) -> str:
    """A Response with an error status (NoPassive, RequestDenied) for the SP, base64-encoded."""
    response = server.create_error_response(request.id, request.acs_url, (status, text),
                                            sign=config.sign_response,
                                            sign_alg=SIGNATURE_ALGORITHMS[config.signature_algorithm],
                                            digest_alg=server.config.digest_algorithm)
    return base64.b64encode(str(response).encode("utf-8")).decode("ascii")
