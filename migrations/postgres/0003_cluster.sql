-- Several host instances on one database: a directory of profiles the host role may list across
-- tenants, a notification when it changes, and the check that a write is made under the current
-- profile lease.

-- The profile directory: ids only, no tenant data. Row-level security hides every profile from
-- the host role outside a tenant scope, yet the instances must see which profiles exist to share
-- them out. The directory is kept by a trigger on `profiles` that runs as the owner role (SECURITY
-- DEFINER); the host role may only read it.
CREATE TABLE profile_directory (
    profile_id    uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    created_at_ms bigint NOT NULL DEFAULT keel_now_ms()
);

-- Every instance LISTENs on `keel_profiles`; the payload is the profile id.
CREATE FUNCTION profile_directory_sync() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO profile_directory (profile_id, user_id) VALUES (NEW.profile_id, NEW.user_id);
        PERFORM pg_notify('keel_profiles', NEW.profile_id::text);
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM profile_directory WHERE profile_id = OLD.profile_id;
        PERFORM pg_notify('keel_profiles', OLD.profile_id::text);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION profile_directory_sync() FROM PUBLIC;
CREATE TRIGGER profiles_directory AFTER INSERT OR DELETE ON profiles
    FOR EACH ROW EXECUTE FUNCTION profile_directory_sync();

-- Profiles made before this migration: the owner reads past its own FORCEd policy for this one
-- statement, inside the migration's transaction.
ALTER TABLE profiles NO FORCE ROW LEVEL SECURITY;
INSERT INTO profile_directory (profile_id, user_id, created_at_ms)
    SELECT profile_id, user_id, created_at_ms FROM profiles;
ALTER TABLE profiles FORCE ROW LEVEL SECURITY;

-- The profile lease fence carried into a profile's writes: an instance opens each transaction of
-- a profile it runs with this check. The lease row is then held FOR SHARE until commit, so a
-- takeover waits for the write to commit, and a holder whose lease expired or was taken over is
-- refused inside its own transaction.
CREATE FUNCTION keel_require_profile_lease(key text, lease_fence bigint) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM profile_leases
    WHERE lock_key = key AND fence = lease_fence AND expires_at_ms > keel_now_ms()
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stale profile lease fence % for %', lease_fence, key
            USING ERRCODE = 'check_violation', CONSTRAINT = 'profile_lease_current';
    END IF;
END
$$;

GRANT SELECT ON profile_directory TO keel_app;
GRANT EXECUTE ON FUNCTION keel_require_profile_lease(text, bigint) TO keel_app;
