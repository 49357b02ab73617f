-- Version counters that make cached policy results exact: a cached answer is keyed on the
-- policy's version and the user's version, so any change to either is a cache miss.
-- The user's version also moves when their group memberships change, directly or
-- through the group tree (a group's parent, attributes or deletion).

ALTER TABLE policies ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN version bigint NOT NULL DEFAULT 1;

CREATE FUNCTION keystage_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER policies_version BEFORE UPDATE ON policies
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION keystage_bump_version();
-- last_login_at changes at every login and no policy result depends on it.
CREATE TRIGGER users_version BEFORE UPDATE ON users
    FOR EACH ROW WHEN ((OLD.*) IS DISTINCT FROM (NEW.*) AND OLD.version = NEW.version
                       AND ROW(OLD.username, OLD.email, OLD.display_name, OLD.password_hash, OLD.is_active,
                               OLD.is_superuser, OLD.attributes, OLD.preferred_locale, OLD.password_changed_at)
                           IS DISTINCT FROM
                           ROW(NEW.username, NEW.email, NEW.display_name, NEW.password_hash, NEW.is_active,
                               NEW.is_superuser, NEW.attributes, NEW.preferred_locale, NEW.password_changed_at))
    EXECUTE FUNCTION keystage_bump_version();

CREATE FUNCTION keystage_membership_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE users SET version = version + 1 WHERE id = NEW.user_id;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE users SET version = version + 1 WHERE id = OLD.user_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER group_memberships_version AFTER INSERT OR UPDATE OR DELETE ON group_memberships
    FOR EACH ROW EXECUTE FUNCTION keystage_membership_changed();

CREATE FUNCTION keystage_group_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Every member of the group or of any group below it sees a different group set.
    UPDATE users SET version = version + 1 WHERE id IN (
        WITH RECURSIVE below(id) AS (
            SELECT OLD.id
            UNION
            SELECT g.id FROM groups g JOIN below ON g.parent_id = below.id
        )
        SELECT m.user_id FROM group_memberships m JOIN below ON m.group_id = below.id
    );
    RETURN NULL;
END $$;

CREATE TRIGGER groups_version AFTER UPDATE OR DELETE ON groups
    FOR EACH ROW EXECUTE FUNCTION keystage_group_changed();
