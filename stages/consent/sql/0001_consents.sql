-- Remembered consent: which scopes a user let an application have, until when.
CREATE TABLE consents (
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    application_id  bigint NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    scopes          text[] NOT NULL,
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, application_id)
);
