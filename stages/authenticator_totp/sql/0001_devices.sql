-- TOTP authenticators (RFC 6238). The secret is encrypted with a key derived from the server's
-- secret key (AES-GCM, nonce first). last_used_step refuses a code already used in its window.
CREATE TABLE authenticator_totp_devices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text NOT NULL,
    secret          bytea NOT NULL,
    last_used_step  bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz
);
CREATE INDEX authenticator_totp_devices_user_idx ON authenticator_totp_devices (user_id);
