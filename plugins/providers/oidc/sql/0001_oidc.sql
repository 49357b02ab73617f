-- OpenID Connect provider: signing keys, authorization codes, tokens.
-- Codes and opaque tokens are stored as SHA-256 digests (they are high-entropy); JWT access
-- tokens by the digest of their jti, so that they can be revoked and looked up the same way.

CREATE TABLE oidc_signing_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kid         text NOT NULL UNIQUE,
    alg         text NOT NULL CHECK (alg IN ('RS256', 'ES256')),
    -- PKCS#8 DER, AES-256-GCM-encrypted with a key derived from the secret key: nonce || ciphertext.
    private_key bytea NOT NULL,
    public_jwk  jsonb NOT NULL,
    -- Published in JWKS from creation, used for signing from signs_from, dropped from JWKS after retire_at.
    signs_from  timestamptz NOT NULL DEFAULT now(),
    retire_at   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE oidc_codes (
    code_hash       bytea PRIMARY KEY,
    grant_id        text NOT NULL,
    provider_id     bigint NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    redirect_uri    text NOT NULL,
    scope           text NOT NULL,
    nonce           text,
    code_challenge  text,
    auth_time       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oidc_codes_expires_idx ON oidc_codes (expires_at);

CREATE TABLE oidc_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('access', 'refresh')),
    -- Every token that one grant (a code exchange, its refreshes) produced: revoked together.
    grant_id    text NOT NULL,
    provider_id bigint NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    user_id     bigint REFERENCES users (id) ON DELETE CASCADE,
    scope       text NOT NULL,
    auth_time   timestamptz,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oidc_tokens_grant_idx ON oidc_tokens (grant_id);
CREATE INDEX oidc_tokens_expires_idx ON oidc_tokens (expires_at);

CREATE INDEX providers_oidc_client_id_idx ON providers ((config ->> 'client_id')) WHERE type = 'oidc';
