-- The wallet balance each real exchange account last reported (in the margin asset, USDT), read
-- by the instances running its profiles: the capital allocated to the profiles claiming an
-- account must not exceed it — checked at allocation and by each instance's account audit
-- (`keel_account_allocation_shortfall_quote`). Ids and amounts only, like `account_claims`.
CREATE TABLE account_balances (
    account        text PRIMARY KEY CONSTRAINT account_balances_account_length CHECK (length(account) BETWEEN 1 AND 80),
    balance        numeric(30, 8) NOT NULL CONSTRAINT account_balances_balance_nonnegative CHECK (balance >= 0),
    reported_at_ms bigint NOT NULL DEFAULT keel_now_ms()
);
GRANT SELECT, INSERT, UPDATE ON account_balances TO keel_app;
