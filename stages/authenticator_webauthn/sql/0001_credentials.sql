-- WebAuthn credentials (passkeys and security keys), several per user, each with its own name.
-- sign_count: the authenticator's counter as last seen; a response that does not raise it (when
-- either is non-zero) is refused as a possible clone (WebAuthn Level 2, section 6.1.1).
CREATE TABLE authenticator_webauthn_credentials (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL,
    credential_id   bytea NOT NULL UNIQUE,
    public_key      bytea NOT NULL,
    sign_count      bigint NOT NULL DEFAULT 0,
    transports      text[] NOT NULL DEFAULT '{}',
    aaguid          text NOT NULL DEFAULT '',
    discoverable    boolean NOT NULL DEFAULT false,
    backed_up       boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz
);
CREATE INDEX authenticator_webauthn_credentials_user_idx ON authenticator_webauthn_credentials (user_id);
