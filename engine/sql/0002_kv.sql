-- The key-value store (engine/kv.py) when no Redis is configured: sessions, flow plans,
-- caches, rate-limit counters. A row whose expires_at has passed is invisible to reads
-- and removed by the periodic purge; the index makes that purge a range scan.
CREATE TABLE kv (
    key         text PRIMARY KEY,
    value       bytea NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX kv_expires_idx ON kv (expires_at);
