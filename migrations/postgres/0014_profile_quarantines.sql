-- A profile's quarantine, stored: why (`reason`), since when (`since_ms`, kernel time of the
-- pass), and the evidence — each order or position the reconciliation pass could not explain,
-- what the store said and what the exchange said, as JSON bounded in size. The instance running
-- the profile writes the row in the pass that quarantines it, so a restart or another instance
-- taking the profile over restores the quarantine instead of forgetting it.
--
-- A request to end it (a resume by the profile's owner, or an operator's clear) is recorded on
-- the open row through any instance (`clear_requested_by`, `clear_requested_at_ms`) and heard by
-- the instance running the profile on `keel_profile_settings`; that instance's next clean pass
-- closes the row (`cleared_at_ms`, `cleared_by`: who asked). Closed rows stay as history. At most
-- one open row per profile (`profile_quarantines_one_open`).
CREATE TABLE profile_quarantines (
    quarantine_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile_id            uuid NOT NULL,
    user_id               uuid NOT NULL,
    reason                text NOT NULL CONSTRAINT profile_quarantines_reason_length CHECK (length(reason) BETWEEN 1 AND 1000),
    evidence              text NOT NULL CONSTRAINT profile_quarantines_evidence_length CHECK (length(evidence) BETWEEN 2 AND 16384),
    since_ms              bigint NOT NULL,
    clear_requested_by    uuid,
    clear_requested_at_ms bigint,
    cleared_at_ms         bigint,
    cleared_by            uuid,
    CONSTRAINT profile_quarantines_request_complete CHECK ((clear_requested_by IS NULL) = (clear_requested_at_ms IS NULL)),
    CONSTRAINT profile_quarantines_cleared_complete CHECK ((cleared_at_ms IS NULL) = (cleared_by IS NULL)),
    CONSTRAINT profile_quarantines_cleared_on_request CHECK (cleared_at_ms IS NULL OR clear_requested_at_ms IS NOT NULL),
    CONSTRAINT profile_quarantines_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);
CREATE UNIQUE INDEX profile_quarantines_one_open ON profile_quarantines (profile_id) WHERE cleared_at_ms IS NULL;

ALTER TABLE profile_quarantines ENABLE ROW LEVEL SECURITY;
ALTER TABLE profile_quarantines FORCE ROW LEVEL SECURITY;
CREATE POLICY profile_quarantines_tenant ON profile_quarantines FOR ALL
    USING (user_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid))
    WITH CHECK (user_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid));
-- History: rows are closed, never deleted.
GRANT SELECT, INSERT, UPDATE ON profile_quarantines TO keel_app;

-- A request to end a quarantine reaches the instance running the profile as its settings do.
CREATE TRIGGER profile_quarantines_clear_requested AFTER UPDATE OF clear_requested_at_ms ON profile_quarantines
    FOR EACH ROW
    WHEN (NEW.clear_requested_at_ms IS NOT NULL AND NEW.cleared_at_ms IS NULL
          AND OLD.clear_requested_at_ms IS DISTINCT FROM NEW.clear_requested_at_ms)
    EXECUTE FUNCTION profile_settings_notify();
