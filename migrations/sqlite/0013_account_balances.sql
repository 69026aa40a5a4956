-- The wallet balance each real exchange account last reported (see the PostgreSQL migration).
CREATE TABLE account_balances (
    account        TEXT PRIMARY KEY CONSTRAINT account_balances_account_length CHECK (length(account) BETWEEN 1 AND 80),
    balance        INTEGER NOT NULL CONSTRAINT account_balances_balance_nonnegative CHECK (balance >= 0),
    reported_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
) STRICT;
