-- Codes and tokens are written on every sign-in to every app. Their foreign keys made each of those
-- inserts lock the client's provider row and the user's row (FOR KEY SHARE, one MultiXact per
-- overlapping sign-in to the same app): about a sixth of PostgreSQL's CPU in a signed-in user's
-- authorization. Nothing reads a code or token without joining its provider and its user (a
-- missing one reads as unknown or inactive), so the check bought nothing; what the foreign keys
-- also did, deleting a user's or a provider's codes and tokens with it, triggers do now.
ALTER TABLE oidc_codes DROP CONSTRAINT oidc_codes_provider_id_fkey,
                       DROP CONSTRAINT oidc_codes_user_id_fkey;
ALTER TABLE oidc_tokens DROP CONSTRAINT oidc_tokens_provider_id_fkey,
                        DROP CONSTRAINT oidc_tokens_user_id_fkey;

CREATE FUNCTION oidc_forget_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM oidc_codes c USING gone g WHERE c.user_id = g.id;
    DELETE FROM oidc_tokens t USING gone g WHERE t.user_id = g.id;
    RETURN NULL;
END $$;

CREATE FUNCTION oidc_forget_providers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM oidc_codes c USING gone g WHERE c.provider_id = g.id;
    DELETE FROM oidc_tokens t USING gone g WHERE t.provider_id = g.id;
    RETURN NULL;
END $$;

CREATE TRIGGER oidc_forget_users AFTER DELETE ON users
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION oidc_forget_users();
CREATE TRIGGER oidc_forget_providers AFTER DELETE ON providers
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION oidc_forget_providers();
