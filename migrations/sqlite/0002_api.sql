-- The API's tables on SQLite: the schema of migrations/postgres/0002_api.sql without roles and
-- RLS; the store API scopes every tenant query by user_id instead.

ALTER TABLE profiles ADD COLUMN risk_limits TEXT;
ALTER TABLE profiles ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CONSTRAINT profiles_paused_bool CHECK (paused IN (0, 1));
ALTER TABLE profiles ADD COLUMN killed INTEGER NOT NULL DEFAULT 0 CONSTRAINT profiles_killed_bool CHECK (killed IN (0, 1));
ALTER TABLE profiles ADD COLUMN deleted_at_ms INTEGER;

CREATE TABLE plugins (
    plugin_id     BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL,
    name          TEXT NOT NULL CONSTRAINT plugins_name_length CHECK (length(name) BETWEEN 1 AND 64),
    sha256        TEXT NOT NULL CONSTRAINT plugins_sha256_hex CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    size_bytes    INTEGER NOT NULL,
    report        TEXT NOT NULL,
    wasm          BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT plugins_size_matches CHECK (size_bytes = length(wasm) AND size_bytes > 0),
    CONSTRAINT plugins_owner_key UNIQUE (plugin_id, user_id),
    CONSTRAINT plugins_user_sha256_key UNIQUE (user_id, sha256)
) STRICT;

CREATE TABLE profile_bindings (
    profile_id  BLOB PRIMARY KEY,
    user_id     BLOB NOT NULL,
    plugin_id   BLOB NOT NULL,
    config      TEXT NOT NULL,
    bound_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT profile_bindings_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id),
    CONSTRAINT profile_bindings_plugin_fkey FOREIGN KEY (plugin_id, user_id) REFERENCES plugins (plugin_id, user_id)
) STRICT;

CREATE TABLE profile_credentials (
    profile_id    BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL,
    exchange      TEXT NOT NULL CONSTRAINT profile_credentials_exchange_length CHECK (length(exchange) BETWEEN 1 AND 32),
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT profile_credentials_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;
