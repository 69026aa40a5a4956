-- An owner's new, replaced or removed exchange credentials reach the instance running the
-- profile, on any instance: it restarts the profile on the account they name. Same channel as
-- the other settings (`keel_profile_settings`), sent at commit.
CREATE FUNCTION profile_credentials_notify() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('keel_profile_settings',
        (CASE TG_OP WHEN 'DELETE' THEN OLD.profile_id ELSE NEW.profile_id END)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER profile_credentials_changed AFTER INSERT OR UPDATE OR DELETE ON profile_credentials
    FOR EACH ROW EXECUTE FUNCTION profile_credentials_notify();
