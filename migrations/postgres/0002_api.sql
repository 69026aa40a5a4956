-- The API's tables: profile settings, uploaded plugins, the plugin bound to each profile and
-- each profile's exchange credentials (sealed by the host; the database never sees them in
-- clear). Every table is tenant data: it carries user_id and is under forced row-level security
-- like the tables of 0001.

-- Settings of a profile. risk_limits is the JSON of the kernel's RiskLimits (NULL until set);
-- paused and killed are the owner's switches, remembered across restarts; a deleted profile
-- keeps its rows (the ledger is append-only) and is hidden from every read.
ALTER TABLE profiles ADD COLUMN risk_limits text;
ALTER TABLE profiles ADD COLUMN paused boolean NOT NULL DEFAULT false;
ALTER TABLE profiles ADD COLUMN killed boolean NOT NULL DEFAULT false;
ALTER TABLE profiles ADD COLUMN deleted_at_ms bigint;

-- An uploaded plugin version: immutable, identified by its sha256 within its owner's uploads.
CREATE TABLE plugins (
    plugin_id     uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    name          text NOT NULL CONSTRAINT plugins_name_length CHECK (length(name) BETWEEN 1 AND 64),
    sha256        text NOT NULL CONSTRAINT plugins_sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes    bigint NOT NULL,
    -- The load report (world, exports, imports) as JSON.
    report        text NOT NULL,
    wasm          bytea NOT NULL,
    created_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT plugins_size_matches CHECK (size_bytes = octet_length(wasm) AND size_bytes > 0),
    CONSTRAINT plugins_owner_key UNIQUE (plugin_id, user_id),
    CONSTRAINT plugins_user_sha256_key UNIQUE (user_id, sha256)
);

-- The plugin version and configuration a profile runs.
CREATE TABLE profile_bindings (
    profile_id  uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    plugin_id   uuid NOT NULL,
    -- A JSON object of string values, given to the plugin's init.
    config      text NOT NULL,
    bound_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT profile_bindings_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id),
    CONSTRAINT profile_bindings_plugin_fkey FOREIGN KEY (plugin_id, user_id) REFERENCES plugins (plugin_id, user_id)
);

-- Exchange credentials of a profile, sealed with an AEAD key the host reads from its
-- environment; the ciphertext is bound to (profile, user) by its associated data.
CREATE TABLE profile_credentials (
    profile_id    uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    exchange      text NOT NULL CONSTRAINT profile_credentials_exchange_length CHECK (length(exchange) BETWEEN 1 AND 32),
    nonce         bytea NOT NULL,
    ciphertext    bytea NOT NULL,
    updated_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT profile_credentials_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['plugins', 'profile_bindings', 'profile_credentials']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL '
            'USING (user_id = (SELECT (nullif(current_setting(''request.jwt.claims'', true), '''')::json ->> ''sub'')::uuid)) '
            'WITH CHECK (user_id = (SELECT (nullif(current_setting(''request.jwt.claims'', true), '''')::json ->> ''sub'')::uuid))',
            t || '_tenant', t);
    END LOOP;
END
$$;

-- An operator (claims whose app_metadata.keel_role is "operator", which a Supabase user cannot
-- set) may read every profile row, and nothing else of other tenants.
CREATE POLICY profiles_operator_read ON profiles FOR SELECT
    USING ((SELECT nullif(current_setting('request.jwt.claims', true), '')::json -> 'app_metadata' ->> 'keel_role') = 'operator');

-- Plugins are immutable once uploaded; bindings are replaced; credentials are replaced or removed.
GRANT SELECT, INSERT ON plugins TO keel_app;
GRANT SELECT, INSERT, UPDATE ON profile_bindings TO keel_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON profile_credentials TO keel_app;
