-- Change announcements (engine/changes.py): a statement that changes a configuration table tells
-- every keystage process, at its commit, which table it changed, so that what a process keeps from
-- these tables is dropped within milliseconds instead of being read again on every request.
CREATE FUNCTION keystage_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keystage_changes', TG_TABLE_NAME);
    RETURN NULL;
END $$;

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['providers', 'applications', 'flows', 'stages', 'flow_stage_bindings',
                                'policies', 'policy_bindings'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION keystage_announce_change()',
                       name || '_announce', name);
    END LOOP;
END $$;
