-- One exchange account, many profiles, no interference: a USDⓈ-M account in one-way mode holds
-- one net position per symbol, so at most one running profile trades each (account, symbol).
-- A profile claims its account's symbols when it starts (the account is `host` for the host's
-- own, `key:<digest of the API key>` for an owner's); a claim whose profile no longer holds a
-- live profile lease (stopped, crashed, deleted) may be taken over. Ids only, no tenant data:
-- the host role reads and writes it across tenants, like the profile directory.
CREATE TABLE account_claims (
    account       text NOT NULL CONSTRAINT account_claims_account_length CHECK (length(account) BETWEEN 1 AND 80),
    symbol        text NOT NULL,
    profile_id    uuid NOT NULL,
    -- The claiming profile's lease (`profile:<profile_id>`): while it is live, the claim holds.
    lease_key     text NOT NULL,
    claimed_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT account_claims_pkey PRIMARY KEY (account, symbol)
);
CREATE INDEX account_claims_profile ON account_claims (profile_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON account_claims TO keel_app;
