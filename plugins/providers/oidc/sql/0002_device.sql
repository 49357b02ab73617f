-- Device authorization grant (RFC 8628): codes for devices without a browser.
CREATE TABLE oidc_device_codes (
    device_code_hash    bytea PRIMARY KEY,
    user_code           text NOT NULL UNIQUE,
    provider_id         bigint NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    scope               text NOT NULL,
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied', 'used')),
    user_id             bigint REFERENCES users (id) ON DELETE CASCADE,
    auth_time           timestamptz,
    poll_interval       integer NOT NULL DEFAULT 5,
    last_poll           timestamptz,
    expires_at          timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oidc_device_codes_expires_idx ON oidc_device_codes (expires_at);
