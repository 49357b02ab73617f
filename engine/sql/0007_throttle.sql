-- Brute-force counters (engine/throttle.py): failures per scope and subject, forgotten at
-- expires_at. The truth lives here; with Redis configured, Redis holds a copy for the hot read.
-- username is '' where the scope has none ('ip'), ip is '' where the scope has none ('user', 'code').
CREATE TABLE throttle_counters (
    scope         text NOT NULL CHECK (scope IN ('user_ip', 'ip', 'user', 'code')),
    username      text NOT NULL,
    ip            text NOT NULL,
    failures      integer NOT NULL CHECK (failures > 0),
    last_failure  timestamptz NOT NULL,
    unblocked_at  timestamptz,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (scope, username, ip)
);
CREATE INDEX throttle_counters_expires_idx ON throttle_counters (expires_at);
CREATE INDEX throttle_counters_ip_idx ON throttle_counters (ip) WHERE ip <> '';
