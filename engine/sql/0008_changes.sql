-- Change announcements (engine/changes.py): a statement that changes a configuration table tells
-- every keystage process, at its commit, which table it changed, so that what a process keeps from
-- these tables is dropped within milliseconds instead of being read again on every request.
CREATE FUNCTION keystage_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keystage_changes', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER providers_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON providers
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
CREATE TRIGGER applications_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON applications
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
CREATE TRIGGER flows_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flows
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
CREATE TRIGGER stages_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON stages
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
CREATE TRIGGER flow_stage_bindings_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flow_stage_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
CREATE TRIGGER policies_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policies
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
CREATE TRIGGER policy_bindings_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policy_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change();
