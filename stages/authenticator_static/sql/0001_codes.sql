-- Recovery codes: one set per user (regenerating replaces it), stored as SHA-256 of the code
-- (they are random and high-entropy, so a password hash would only cost time). used_at makes
-- each code single use.
CREATE TABLE authenticator_static_codes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz,
    UNIQUE (user_id, code_hash)
);
