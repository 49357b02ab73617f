-- Core data: users, nested groups, memberships and the event (audit) log.

CREATE TABLE users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        text NOT NULL,
    email           text,
    display_name    text NOT NULL DEFAULT '',
    password_hash   text,
    password_changed_at timestamptz,
    is_active       boolean NOT NULL DEFAULT true,
    is_superuser    boolean NOT NULL DEFAULT false,
    attributes      jsonb NOT NULL DEFAULT '{}'::jsonb,
    preferred_locale text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz,
    CONSTRAINT users_username_not_blank CHECK (btrim(username) <> ''),
    CONSTRAINT users_attributes_object CHECK (jsonb_typeof(attributes) = 'object')
);
-- Usernames and emails are unique regardless of case: "Alice" and "alice" are one person.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE email IS NOT NULL;

CREATE TABLE groups (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    parent_id   bigint REFERENCES groups (id) ON DELETE SET NULL,
    is_superuser boolean NOT NULL DEFAULT false,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT groups_not_own_parent CHECK (parent_id IS DISTINCT FROM id),
    CONSTRAINT groups_attributes_object CHECK (jsonb_typeof(attributes) = 'object')
);
CREATE UNIQUE INDEX groups_name_key ON groups (lower(name));
CREATE INDEX groups_parent_idx ON groups (parent_id);

CREATE TABLE group_memberships (
    group_id    bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_memberships_user_idx ON group_memberships (user_id);

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action      text NOT NULL,
    user_id     bigint REFERENCES users (id) ON DELETE SET NULL,
    username    text,
    client_ip   inet,
    user_agent  text,
    context     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_created_idx ON events (created_at DESC);
CREATE INDEX events_action_idx ON events (action, created_at DESC);
CREATE INDEX events_user_idx ON events (user_id, created_at DESC);
