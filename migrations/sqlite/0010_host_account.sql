-- The operator's assignments of the host's exchange account (see the PostgreSQL migration): a
-- profile without its owner's credentials and without an assignment trades on paper.
CREATE TABLE host_account_assignments (
    profile_id     BLOB PRIMARY KEY,
    user_id        BLOB NOT NULL,
    operator_id    BLOB NOT NULL,
    assigned_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT host_account_assignments_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;
