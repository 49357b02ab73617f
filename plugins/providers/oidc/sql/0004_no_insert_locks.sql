-- Codes and tokens are written on every sign-in to every app. Their foreign keys made each of those
-- inserts lock the client's provider row and the user's row (FOR KEY SHARE, one MultiXact per
-- overlapping sign-in to the same app): about a sixth of PostgreSQL's CPU in a signed-in user's
-- authorization. Nothing reads a code or token without joining its provider and its user (a
-- missing one reads as unknown or inactive), so the check bought nothing; what the foreign keys
-- also did, deleting a user's or a provider's codes and tokens with it, a trigger does now.
ALTER TABLE oidc_codes DROP CONSTRAINT oidc_codes_provider_id_fkey,
                       DROP CONSTRAINT oidc_codes_user_id_fkey;
ALTER TABLE oidc_tokens DROP CONSTRAINT oidc_tokens_provider_id_fkey,
                        DROP CONSTRAINT oidc_tokens_user_id_fkey;

-- TG_ARGV[0]: the column of codes and tokens that refers to the deleted rows.
CREATE FUNCTION oidc_forget_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DELETE FROM oidc_codes c USING gone g WHERE c.%I = g.id', TG_ARGV[0]);
    EXECUTE format('DELETE FROM oidc_tokens t USING gone g WHERE t.%I = g.id', TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER oidc_forget_users AFTER DELETE ON users
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION oidc_forget_deleted('user_id');
CREATE TRIGGER oidc_forget_providers AFTER DELETE ON providers
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION oidc_forget_deleted('provider_id');
