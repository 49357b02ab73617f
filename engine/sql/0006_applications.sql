-- Providers (one protocol's settings for one client: OIDC, SAML, ...) and applications (what a
-- user sees in the library and what policies guard), plus applications as policy-binding targets.

CREATE TABLE providers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    type        text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE applications (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug                text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9_-]*$'),
    name                text NOT NULL,
    description         text NOT NULL DEFAULT '',
    launch_url          text,
    icon                text,
    "group"             text NOT NULL DEFAULT '',
    -- One provider serves at most one application.
    provider_id         bigint UNIQUE REFERENCES providers (id) ON DELETE SET NULL,
    policy_engine_mode  text NOT NULL DEFAULT 'any' CHECK (policy_engine_mode IN ('all', 'any')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE policy_bindings ADD COLUMN application_id bigint REFERENCES applications (id) ON DELETE CASCADE;
ALTER TABLE policy_bindings DROP CONSTRAINT policy_bindings_one_target;
ALTER TABLE policy_bindings ADD CONSTRAINT policy_bindings_one_target
    CHECK (num_nonnulls(flow_id, stage_binding_id, application_id) = 1);
CREATE INDEX policy_bindings_application_idx ON policy_bindings (application_id) WHERE application_id IS NOT NULL;
