-- Who accepted which version of the terms, and when. Owned by the plugin "terms": the kernel
-- records this file as ("terms", 1) and never runs it twice. Table names start with the
-- plugin's name so that they cannot clash with the kernel's or another plugin's.
CREATE TABLE terms_acceptances (
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    version     text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    client_ip   inet,
    PRIMARY KEY (user_id, version)
);
