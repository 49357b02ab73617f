CREATE TABLE reputation_scores (
    kind        text NOT NULL CHECK (kind IN ('ip', 'username')),
    identifier  text NOT NULL,
    score       integer NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, identifier)
);
