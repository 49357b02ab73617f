"""DPoP (RFC 9449): tokens bound to a key the client proves it holds with every request.

A proof is a JWT the client signs with its DPoP key and sends in the ``DPoP`` header (section 4):
``typ: dpop+jwt``, an asymmetric ``alg``, the public key in ``jwk``; claims ``htm`` and ``htu`` (the
request's method and URL), a recent ``iat``, a ``jti`` used once, and at resource endpoints ``ath``
(the hash of the access token). Tokens issued with a proof carry the key's thumbprint (``cnf.jkt``
in JWTs, a column for opaque and refresh tokens) and are refused without a matching proof.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import TYPE_CHECKING

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

if TYPE_CHECKING:
    from keystage.engine.runtime import Keystage

ALGORITHMS = ("ES256", "RS256", "PS256")
MAX_AGE = 60  # seconds a proof's iat may be away from now


def ath(access_token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()).rstrip(b"=").decode()


def _segment(value: str) -> dict:
    data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


async def verify(keystage: Keystage, proof: str, *, method: str, url: str,
                 access_token: str | None = None) -> str | None:
    """The proof's key thumbprint (``jkt``) when ``proof`` is valid for this request, else None."""
    try:
        header_b64, payload_b64, _ = proof.split(".")
        header, claims = _segment(header_b64), _segment(payload_b64)
    except ValueError:
        return None
    if header.get("typ") != "dpop+jwt" or header.get("alg") not in ALGORITHMS:
        return None
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or jwk.get("kty") not in ("EC", "RSA") or "d" in jwk or "p" in jwk:
        return None  # section 4.3: a public asymmetric key, never a private one
    try:
        key = (ECKey if jwk["kty"] == "EC" else RSAKey).import_key(jwk)
        jws.deserialize_compact(proof, key, algorithms=[header["alg"]])
    except (JoseError, ValueError, KeyError, TypeError):
        return None
    now = time.time()
    iat, jti = claims.get("iat"), claims.get("jti")
    if claims.get("htm") != method or claims.get("htu") != url:
        return None
    if not isinstance(iat, (int, float)) or abs(now - iat) > MAX_AGE:
        return None
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        return None
    if access_token is not None and claims.get("ath") != ath(access_token):
        return None
    jkt = key.thumbprint()
    if await keystage.kv.incr(f"oidc_dpop:{jkt}:{jti}", ttl=2 * MAX_AGE) != 1:
        return None  # section 11.1: a replayed proof
    return jkt
