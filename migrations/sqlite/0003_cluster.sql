-- The profile directory (see the PostgreSQL migration): SQLite has no row-level security and runs
-- one instance, but the host lists profiles through the same table on both backends.
CREATE TABLE profile_directory (
    profile_id    BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
) STRICT;

CREATE TRIGGER profiles_directory_insert AFTER INSERT ON profiles
BEGIN
    INSERT INTO profile_directory (profile_id, user_id) VALUES (NEW.profile_id, NEW.user_id);
END;
CREATE TRIGGER profiles_directory_delete AFTER DELETE ON profiles
BEGIN
    DELETE FROM profile_directory WHERE profile_id = OLD.profile_id;
END;

INSERT INTO profile_directory (profile_id, user_id, created_at_ms)
    SELECT profile_id, user_id, created_at_ms FROM profiles;
