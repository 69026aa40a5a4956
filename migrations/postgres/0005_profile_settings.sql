-- Several instances: the one running a profile hears at once when its owner changes it through
-- the API on another instance, and a deleted profile leaves the directory (its loops stop).

-- `keel_profile_settings` carries the profile id of a change of its switches, risk rules or
-- bound plugin; the instance running the profile re-reads it. Sent at commit, so only changes
-- that happened are heard.
CREATE FUNCTION profile_settings_notify() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('keel_profile_settings', NEW.profile_id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER profiles_settings_changed AFTER UPDATE OF paused, killed, risk_limits ON profiles
    FOR EACH ROW
    WHEN (OLD.paused IS DISTINCT FROM NEW.paused OR OLD.killed IS DISTINCT FROM NEW.killed
          OR OLD.risk_limits IS DISTINCT FROM NEW.risk_limits)
    EXECUTE FUNCTION profile_settings_notify();
CREATE TRIGGER profile_bindings_changed AFTER INSERT OR UPDATE ON profile_bindings
    FOR EACH ROW EXECUTE FUNCTION profile_settings_notify();

-- A profile marked deleted leaves the directory like a removed one. Runs as the owner role, as
-- `profile_directory_sync` does: the host role only reads the directory.
CREATE FUNCTION profile_directory_forget_deleted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM profile_directory WHERE profile_id = NEW.profile_id;
    PERFORM pg_notify('keel_profiles', NEW.profile_id::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION profile_directory_forget_deleted() FROM PUBLIC;
CREATE TRIGGER profiles_directory_deleted AFTER UPDATE OF deleted_at_ms ON profiles
    FOR EACH ROW WHEN (OLD.deleted_at_ms IS NULL AND NEW.deleted_at_ms IS NOT NULL)
    EXECUTE FUNCTION profile_directory_forget_deleted();

-- Profiles deleted before this migration.
DELETE FROM profile_directory d USING profiles p
    WHERE p.profile_id = d.profile_id AND p.deleted_at_ms IS NOT NULL;
