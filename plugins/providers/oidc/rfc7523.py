"""Client authentication with ``private_key_jwt`` (RFC 7523 section 2.2 and 3, OIDC Core section 9).

The client signs a short-lived JWT with its private key; keystage checks it against the public keys
registered in the provider's ``jwks``. Only asymmetric algorithms are accepted: ``none`` and the HMAC
family are refused before any key is looked at, so a public key can never serve as an HMAC secret
(the "HS256 with the public key" confusion). Each assertion's ``jti`` is usable once.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

    from .tokens import Client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS256", "PS256", "ES256")
MAX_LIFETIME = 300  # an assertion valid for longer than this is refused (exp - iat, and exp - now)
LEEWAY = 30


def unverified_issuer(assertion: str) -> str | None:
    """The ``iss`` of an assertion before it is verified: only to find which client's keys to use."""
    try:
        payload = assertion.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def header_alg(assertion: str) -> str | None:
    try:
        header = assertion.split(".")[0]
        value = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (IndexError, ValueError):
        return None
    alg = value.get("alg") if isinstance(value, dict) else None
    return alg if isinstance(alg, str) else None


async def verify(keystage: Keystage, client: Client, assertion: str, audiences: set[str]) -> bool:
    """Whether ``assertion`` authenticates ``client`` (signature, iss/sub, aud, exp, one-time jti)."""
    jwks = client.config.jwks
    if not jwks or header_alg(assertion) not in ALGORITHMS:
        return False
    try:
        keys = KeySet.import_key_set(jwks)
        token = jwt.decode(assertion, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, KeyError, TypeError):
        return False
    claims = token.claims
    client_id = client.config.client_id
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return False
    aud = claims.get("aud")
    if not (set(aud) if isinstance(aud, list) else {aud}) & audiences:
        return False
    now = time.time()
    exp, jti = claims.get("exp"), claims.get("jti")
    if not isinstance(exp, int) or exp < now - LEEWAY or exp > now + MAX_LIFETIME:
        return False
    iat = claims.get("iat")
    if isinstance(iat, int) and (iat > now + LEEWAY or exp - iat > MAX_LIFETIME):
        return False
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        return False
    # One use per jti per client, remembered until the assertion could no longer be used anyway.
    uses = await keystage.kv.incr(f"oidc_jti:{client_id}:{jti}", ttl=MAX_LIFETIME + 2 * LEEWAY)
    return uses == 1
