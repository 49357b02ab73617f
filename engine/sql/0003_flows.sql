-- Flows, stages, stage bindings, and policy bindings (on flows and on stage bindings).
-- Policy objects get their behaviour with the policies issue; the table exists so that
-- bindings can point at them already.

CREATE TABLE flows (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug            text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9_-]*$'),
    name            text NOT NULL,
    title           text NOT NULL DEFAULT '',
    designation     text NOT NULL CHECK (designation IN ('authentication', 'authorization', 'enrollment',
                        'invalidation', 'recovery', 'stage_configuration', 'unenrollment')),
    policy_engine_mode text NOT NULL DEFAULT 'any' CHECK (policy_engine_mode IN ('all', 'any')),
    denied_action   text NOT NULL DEFAULT 'message' CHECK (denied_action IN ('message', 'continue')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    type        text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE flow_stage_bindings (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flow_id                 bigint NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    stage_id                bigint NOT NULL REFERENCES stages (id) ON DELETE CASCADE,
    "order"                 integer NOT NULL DEFAULT 0,
    evaluate_on_plan        boolean NOT NULL DEFAULT true,
    re_evaluate_policies    boolean NOT NULL DEFAULT false,
    invalid_response_action text NOT NULL DEFAULT 'retry'
                            CHECK (invalid_response_action IN ('retry', 'restart', 'restart_with_context')),
    UNIQUE (flow_id, stage_id, "order")
);
CREATE INDEX flow_stage_bindings_flow_idx ON flow_stage_bindings (flow_id, "order");

CREATE TABLE policies (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    type        text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(config) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row binds exactly one of (policy, user, group) to exactly one target. Targets are
-- separate nullable foreign keys, so deleting a flow or binding removes its bindings;
-- later migrations add target columns (application, source) the same way.
CREATE TABLE policy_bindings (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flow_id             bigint REFERENCES flows (id) ON DELETE CASCADE,
    stage_binding_id    bigint REFERENCES flow_stage_bindings (id) ON DELETE CASCADE,
    policy_id           bigint REFERENCES policies (id) ON DELETE CASCADE,
    user_id             bigint REFERENCES users (id) ON DELETE CASCADE,
    group_id            bigint REFERENCES groups (id) ON DELETE CASCADE,
    "order"             integer NOT NULL DEFAULT 0,
    enabled             boolean NOT NULL DEFAULT true,
    negate              boolean NOT NULL DEFAULT false,
    timeout             integer NOT NULL DEFAULT 30 CHECK (timeout > 0),
    failure_result      boolean NOT NULL DEFAULT false,
    CONSTRAINT policy_bindings_one_target CHECK (num_nonnulls(flow_id, stage_binding_id) = 1),
    CONSTRAINT policy_bindings_one_subject CHECK (num_nonnulls(policy_id, user_id, group_id) = 1)
);
CREATE INDEX policy_bindings_flow_idx ON policy_bindings (flow_id) WHERE flow_id IS NOT NULL;
CREATE INDEX policy_bindings_stage_binding_idx ON policy_bindings (stage_binding_id) WHERE stage_binding_id IS NOT NULL;
