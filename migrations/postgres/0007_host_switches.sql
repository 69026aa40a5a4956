-- The host-wide kill switch, one row shared by every instance on the database: an operator who
-- engages it through any instance stops new entries on all of them, and it survives restarts.
-- A change NOTIFYs `keel_host_switches` at commit, so the other instances apply it at once.
CREATE TABLE host_switches (
    id            smallint PRIMARY KEY CHECK (id = 1),
    kill          boolean NOT NULL DEFAULT FALSE,
    updated_at_ms bigint  NOT NULL DEFAULT keel_now_ms(),
    -- The operator who last changed it.
    updated_by    uuid
);
INSERT INTO host_switches (id) VALUES (1);
GRANT SELECT, UPDATE (kill, updated_at_ms, updated_by) ON host_switches TO keel_app;

CREATE FUNCTION host_switches_notify() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('keel_host_switches', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER host_switches_changed AFTER UPDATE ON host_switches
    FOR EACH ROW EXECUTE FUNCTION host_switches_notify();
