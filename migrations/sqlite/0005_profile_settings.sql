-- A profile marked deleted leaves the directory like a removed one (see the PostgreSQL
-- migration; one SQLite instance needs no notifications).
CREATE TRIGGER profiles_directory_deleted AFTER UPDATE OF deleted_at_ms ON profiles
    WHEN OLD.deleted_at_ms IS NULL AND NEW.deleted_at_ms IS NOT NULL
BEGIN
    DELETE FROM profile_directory WHERE profile_id = NEW.profile_id;
END;

DELETE FROM profile_directory
    WHERE profile_id IN (SELECT profile_id FROM profiles WHERE deleted_at_ms IS NOT NULL);
