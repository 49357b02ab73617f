-- SAML provider: one signing key and self-signed certificate per provider (what its metadata
-- publishes), and the key behind its persistent NameIDs. Private parts are sealed with a key
-- derived from KEYSTAGE_SECRET_KEY (engine/sealing.py): nonce || AES-256-GCM ciphertext.

CREATE TABLE saml_keys (
    provider_id    bigint PRIMARY KEY REFERENCES providers (id) ON DELETE CASCADE,
    private_key    bytea NOT NULL,
    certificate    text NOT NULL,
    pseudonym_key  bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
