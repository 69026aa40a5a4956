-- The orders of a profile that may still fill, by symbol: an EXIT's write-ahead sums the
-- quantity of those in flight, and recovery and reconciliation list them. Without it each of
-- these reads every order the profile ever placed.
CREATE INDEX orders_open ON orders (profile_id, symbol)
    WHERE status IN ('PENDING_SUBMIT', 'UNKNOWN', 'NEW', 'PARTIALLY_FILLED');
