-- One running profile per (exchange account, symbol) (see the PostgreSQL migration).
CREATE TABLE account_claims (
    account       TEXT NOT NULL CONSTRAINT account_claims_account_length CHECK (length(account) BETWEEN 1 AND 80),
    symbol        TEXT NOT NULL,
    profile_id    BLOB NOT NULL,
    lease_key     TEXT NOT NULL,
    claimed_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT account_claims_pkey PRIMARY KEY (account, symbol)
) STRICT;
CREATE INDEX account_claims_profile ON account_claims (profile_id);
