-- A profile's quarantine, stored (see the PostgreSQL migration): reason, since, evidence, the
-- request to end it and, once a clean pass ended it, when and on whose request. Closed rows stay
-- as history; at most one open row per profile.
CREATE TABLE profile_quarantines (
    quarantine_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id            BLOB NOT NULL,
    user_id               BLOB NOT NULL,
    reason                TEXT NOT NULL CONSTRAINT profile_quarantines_reason_length CHECK (length(reason) BETWEEN 1 AND 1000),
    evidence              TEXT NOT NULL CONSTRAINT profile_quarantines_evidence_length CHECK (length(evidence) BETWEEN 2 AND 16384),
    since_ms              INTEGER NOT NULL,
    clear_requested_by    BLOB,
    clear_requested_at_ms INTEGER,
    cleared_at_ms         INTEGER,
    cleared_by            BLOB,
    CONSTRAINT profile_quarantines_request_complete CHECK ((clear_requested_by IS NULL) = (clear_requested_at_ms IS NULL)),
    CONSTRAINT profile_quarantines_cleared_complete CHECK ((cleared_at_ms IS NULL) = (cleared_by IS NULL)),
    CONSTRAINT profile_quarantines_cleared_on_request CHECK (cleared_at_ms IS NULL OR clear_requested_at_ms IS NOT NULL),
    CONSTRAINT profile_quarantines_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;
CREATE UNIQUE INDEX profile_quarantines_one_open ON profile_quarantines (profile_id) WHERE cleared_at_ms IS NULL;
