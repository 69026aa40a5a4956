-- A profile trades live only on an exchange account its owner supplied (`profile_credentials`)
-- or the host's own account, which an operator assigns to it explicitly here; any other profile
-- trades on a paper account. The host role may read a tenant's own assignment and write
-- assignments only under operator claims. A change reaches the instance running the profile on
-- `keel_profile_settings`, which restarts it on the account the change names.
CREATE TABLE host_account_assignments (
    profile_id     uuid PRIMARY KEY,
    user_id        uuid NOT NULL,
    -- The operator who assigned it.
    operator_id    uuid NOT NULL,
    assigned_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT host_account_assignments_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);

ALTER TABLE host_account_assignments ENABLE ROW LEVEL SECURITY;
ALTER TABLE host_account_assignments FORCE ROW LEVEL SECURITY;
CREATE POLICY host_account_assignments_tenant_read ON host_account_assignments FOR SELECT
    USING (user_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid));
CREATE POLICY host_account_assignments_operator ON host_account_assignments FOR ALL
    USING ((SELECT nullif(current_setting('request.jwt.claims', true), '')::json -> 'app_metadata' ->> 'keel_role') = 'operator')
    WITH CHECK ((SELECT nullif(current_setting('request.jwt.claims', true), '')::json -> 'app_metadata' ->> 'keel_role') = 'operator'
                AND operator_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid));
GRANT SELECT, INSERT, DELETE ON host_account_assignments TO keel_app;

CREATE FUNCTION host_account_assignments_notify() RETURNS trigger
    LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_notify('keel_profile_settings',
        (CASE TG_OP WHEN 'DELETE' THEN OLD.profile_id ELSE NEW.profile_id END)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER host_account_assignments_changed AFTER INSERT OR DELETE ON host_account_assignments
    FOR EACH ROW EXECUTE FUNCTION host_account_assignments_notify();
