"""The OIDC provider type and its configuration (``model: provider``, ``type: oidc`` in blueprints)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Literal

import pydantic

from keystage.engine.applications import ProviderConfig, ProviderType
from keystage.engine.sandbox import ExpressionError, check

GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
DEFAULT_SCOPES = ("openid", "profile", "email", "groups", "offline_access")
CLIENT_ID = re.compile(r"^[A-Za-z0-9._~-]{1,255}$")
SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 3.3 scope-token


def secret_digest(secret: str) -> str:
    """Client secrets are high-entropy machine secrets: a SHA-256 is enough (DESIGN: performance habits)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class RedirectURI(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    url: str
    # "strict": the request's redirect_uri must be this exact string. "regex": a full match of
    # this pattern, only when the admin says so explicitly.
    matching: Literal["strict", "regex"] = "strict"

    @pydantic.model_validator(mode="after")
    def _valid(self) -> RedirectURI:
        if self.matching == "regex":
            try:
                re.compile(self.url)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        elif "#" in self.url or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", self.url):
            raise ValueError("must be an absolute URI without a fragment (RFC 6749 3.1.2)")
        return self

    def matches(self, candidate: str) -> bool:
        if self.matching == "regex":
            return re.fullmatch(self.url, candidate) is not None
        return hmac.compare_digest(self.url.encode(), candidate.encode())


class OIDCConfig(ProviderConfig):
    client_id: str
    # The SHA-256 of the client secret. Blueprints may give ``client_secret`` instead (for
    # instance from ``!Env``): it is replaced by its digest before anything is stored.
    client_secret_hash: str | None = None
    client_type: Literal["confidential", "public"] = "confidential"
    # The client's public keys (a JWK Set) for private_key_jwt client authentication (RFC 7523).
    jwks: dict[str, Any] | None = None
    redirect_uris: list[RedirectURI] = pydantic.Field(default_factory=list)
    post_logout_redirect_uris: list[str] = pydantic.Field(default_factory=list)
    grant_types: list[Literal["authorization_code", "refresh_token", "client_credentials",
                              "urn:ietf:params:oauth:grant-type:device_code"]] = pydantic.Field(
        default_factory=lambda: ["authorization_code", "refresh_token"])
    scopes: list[str] = pydantic.Field(default_factory=lambda: list(DEFAULT_SCOPES))
    signing_alg: Literal["RS256", "ES256"] = "RS256"
    access_token_format: Literal["opaque", "jwt"] = "jwt"
    access_token_lifetime: int = pydantic.Field(default=600, ge=30, le=86400)
    id_token_lifetime: int = pydantic.Field(default=600, ge=30, le=86400)
    refresh_token_lifetime: int = pydantic.Field(default=30 * 86400, ge=60, le=365 * 86400)
    refresh_token_rotation: bool = True
    code_lifetime: int = pydantic.Field(default=60, ge=10, le=600)
    # RFC 9126: authorization requests only through /oauth2/par.
    require_pushed_authorization_requests: bool = False
    authorization_flow: str = "default-provider-authorization-explicit-consent"
    # {scope: expression returning a dict of claims}: added to (and overriding) the defaults.
    property_mappings: dict[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _hash_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "client_secret" in data:
            data = dict(data)
            secret = data.pop("client_secret")
            if not isinstance(secret, str) or len(secret) < 32:
                raise ValueError("client_secret must be at least 32 characters (a generated secret)")
            if data.get("client_secret_hash") not in (None, secret_digest(secret)):
                raise ValueError("give client_secret or client_secret_hash, not both")
            data["client_secret_hash"] = secret_digest(secret)
        if isinstance(data, dict) and isinstance(data.get("redirect_uris"), list):
            data["redirect_uris"] = [{"url": u} if isinstance(u, str) else u for u in data["redirect_uris"]]
        return data

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> OIDCConfig:
        if not CLIENT_ID.match(self.client_id) or self.client_id.isdigit():
            # Not all digits: user subjects are, and a client_credentials token's subject is the client id.
            raise ValueError("client_id: 1-255 letters, digits and . _ ~ - (not only digits)")
        if self.client_type == "confidential" and not (self.client_secret_hash or self.jwks):
            raise ValueError("a confidential client needs client_secret (or client_secret_hash) or jwks")
        if self.jwks is not None:
            from joserfc.jwk import KeySet

            try:
                keys = KeySet.import_key_set(self.jwks)  # type: ignore[arg-type]
            except Exception as exc:
                raise ValueError(f"jwks: not a JWK Set: {exc}") from None
            if any(key.key_type == "oct" or key.is_private for key in keys.keys):
                raise ValueError("jwks: public keys only (RSA, EC); no symmetric and no private keys")
        if self.client_type == "public" and "client_credentials" in self.grant_types:
            raise ValueError("a public client cannot use client_credentials")
        if "authorization_code" in self.grant_types and not self.redirect_uris:
            raise ValueError("authorization_code needs at least one redirect URI")
        for scope in self.scopes:
            if not SCOPE.match(scope):
                raise ValueError(f"scopes: {scope!r} is not a scope token")
        for scope, source in self.property_mappings.items():
            try:
                check(source)
            except ExpressionError as exc:
                raise ValueError(f"property_mappings.{scope}: {exc.describe()}") from None
        return self

    def check_secret(self, secret: str | None) -> bool:
        if not self.client_secret_hash or secret is None:
            return False
        return hmac.compare_digest(self.client_secret_hash, secret_digest(secret))

    def redirect_uri_allowed(self, candidate: str) -> bool:
        return any(uri.matches(candidate) for uri in self.redirect_uris)


class OIDCProvider(ProviderType):
    type_name = "oidc"
    Config = OIDCConfig
