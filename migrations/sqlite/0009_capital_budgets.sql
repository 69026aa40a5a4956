-- Capital has an authority (see the PostgreSQL migration): an operator's grants, journalled in
-- `budget_grants`, make each user's budget; every ALLOCATE entry of `ledger_entries` draws on it.
-- Triggers keep `capital_budgets` equal to its journals; its CHECK refuses an allocation beyond
-- the grant, and an allocation by a user with no budget is refused by the trigger.
CREATE TABLE capital_budgets (
    user_id       BLOB PRIMARY KEY,
    granted       INTEGER NOT NULL DEFAULT 0 CONSTRAINT capital_budgets_granted_nonnegative CHECK (granted >= 0),
    allocated     INTEGER NOT NULL DEFAULT 0 CONSTRAINT capital_budgets_allocated_nonnegative CHECK (allocated >= 0),
    updated_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    -- The kernel's limit of one capital column (10^10 quote in units of 10^-8).
    CONSTRAINT capital_budgets_granted_bounded CHECK (granted <= 1000000000000000000),
    CONSTRAINT capital_budgets_within_grant CHECK (allocated <= granted)
) STRICT;

CREATE TABLE budget_grants (
    grant_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       BLOB NOT NULL,
    operator_id   BLOB NOT NULL,
    amount        INTEGER NOT NULL CONSTRAINT budget_grants_amount_nonzero CHECK (amount <> 0),
    created_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
) STRICT;
CREATE INDEX budget_grants_user ON budget_grants (user_id);

CREATE TRIGGER budget_grants_append_only_update BEFORE UPDATE ON budget_grants
BEGIN
    SELECT RAISE(ABORT, 'budget_grants_append_only: budget_grants is append-only: UPDATE refused');
END;
CREATE TRIGGER budget_grants_append_only_delete BEFORE DELETE ON budget_grants
BEGIN
    SELECT RAISE(ABORT, 'budget_grants_append_only: budget_grants is append-only: DELETE refused');
END;

CREATE TRIGGER budget_grants_apply AFTER INSERT ON budget_grants
BEGIN
    INSERT OR IGNORE INTO capital_budgets (user_id) VALUES (NEW.user_id);
    UPDATE capital_budgets
        SET granted = granted + NEW.amount,
            updated_at_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER)
        WHERE user_id = NEW.user_id;
END;

CREATE TRIGGER ledger_entries_draw_budget AFTER INSERT ON ledger_entries
    WHEN NEW.entry_kind = 'ALLOCATE'
BEGIN
    SELECT RAISE(ABORT, 'capital_budgets_within_grant: the user has no capital budget')
        WHERE NOT EXISTS (SELECT 1 FROM capital_budgets WHERE user_id = NEW.user_id);
    UPDATE capital_budgets
        SET allocated = allocated + NEW.d_allocated,
            updated_at_ms = CAST(unixepoch('subsec') * 1000 AS INTEGER)
        WHERE user_id = NEW.user_id;
END;

-- What existed before budgets keeps its allocations (see the PostgreSQL migration).
INSERT INTO budget_grants (user_id, operator_id, amount)
    SELECT user_id, zeroblob(16), SUM(d_allocated)
    FROM ledger_entries WHERE entry_kind = 'ALLOCATE' GROUP BY user_id HAVING SUM(d_allocated) <> 0;
UPDATE capital_budgets SET allocated = granted;
