-- Blueprints applied once and remembered (engine/blueprints.py, apply_defaults): a shipped
-- default is applied at first start only, so an admin's later edits survive restarts.
-- The checksum is that of the file as applied, for telling later whether it has changed.
CREATE TABLE blueprint_instances (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
