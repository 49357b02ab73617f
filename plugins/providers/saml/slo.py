"""Single logout, SP-initiated: a LogoutRequest arrives (Redirect or POST binding), is checked like an
AuthnRequest (size, no DTD, issuer, signature, destination, replay), the keystage session ends, and a
signed LogoutResponse goes back to the SP's single-logout URL by the binding it registered."""

from __future__ import annotations

import base64
import dataclasses
from typing import TYPE_CHECKING, Any

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from . import messages
from .config import SIGNATURE_ALGORITHMS
from .messages import Refused

if TYPE_CHECKING:
    from keystage.engine.kv import KeyValueStore

    from .service_providers import ServiceProvider


@dataclasses.dataclass(frozen=True)
class LogoutAnswer:
    """How the LogoutResponse travels: a redirect ``url``, or a form ``fields`` posted to ``url``."""

    url: str
    fields: list[tuple[str, str]] | None = None


async def parse_logout_request(sp: ServiceProvider, kv: KeyValueStore, *, binding: str, saml_request: str,
                               relay_state: str | None, sigalg: str | None, signature: str | None) -> Any:
    if not sp.config.slo_url:
        raise Refused("this SP has no single-logout URL configured")
    return await messages.read_request(sp, kv, "logout", binding=binding, saml_request=saml_request,
                                       relay_state=relay_state, sigalg=sigalg, signature=signature)


def logout_answer(sp: ServiceProvider, message: Any, relay_state: str | None) -> LogoutAnswer:
    """The signed LogoutResponse to ``message``, by the SP's registered binding (synchronous: xmlsec1)."""
    config = sp.config
    binding = BINDING_HTTP_REDIRECT if config.slo_binding == "redirect" else BINDING_HTTP_POST
    sign_alg = SIGNATURE_ALGORITHMS[config.signature_algorithm]
    response = sp.server.create_logout_response(message, bindings=[binding], sign=binding == BINDING_HTTP_POST,
                                                sign_alg=sign_alg, digest_alg=sp.server.config.digest_algorithm)
    assert config.slo_url is not None
    if binding == BINDING_HTTP_REDIRECT:
        info = sp.server.apply_binding(binding, str(response), config.slo_url, relay_state or "", response=True,
                                       sign=True, sigalg=sign_alg)
        return LogoutAnswer(dict(info["headers"])["Location"])
    fields = [("SAMLResponse", base64.b64encode(str(response).encode("utf-8")).decode("ascii"))]
    if relay_state:
        fields.append(("RelayState", relay_state))
    return LogoutAnswer(config.slo_url, fields)
