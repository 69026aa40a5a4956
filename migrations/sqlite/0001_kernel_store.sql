-- Keel kernel store on SQLite: the schema of migrations/postgres without roles and RLS (one
-- instance, one user of the file); the store API scopes every tenant query by user_id instead.
--
-- Money is exact fixed-point: INTEGER counts of 10^-8 quote units ("units"), the same scale as
-- NUMERIC(30, 8) on PostgreSQL. SQLite has no exact decimal type and REAL is never used for money.
-- The kernel bounds every capital column to 10^10 quote (10^18 units), so the sums in the CHECK
-- constraints below stay far inside a 64-bit integer and never fall back to floating point.
-- Ids are UUIDs stored as 16-byte BLOBs; times are INTEGER milliseconds since the Unix epoch.

CREATE TABLE profiles (
    profile_id    BLOB PRIMARY KEY,
    user_id       BLOB NOT NULL,
    name          TEXT NOT NULL CONSTRAINT profiles_name_length CHECK (length(name) BETWEEN 1 AND 64),
    created_at_ms INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT profiles_owner_key UNIQUE (profile_id, user_id)
) STRICT;

CREATE TABLE capital_accounts (
    profile_id             BLOB PRIMARY KEY,
    user_id                BLOB NOT NULL,
    allocated              INTEGER NOT NULL DEFAULT 0 CONSTRAINT capital_allocated_nonnegative CHECK (allocated >= 0),
    reserved_for_orders    INTEGER NOT NULL DEFAULT 0 CONSTRAINT capital_reserved_for_orders_nonnegative CHECK (reserved_for_orders >= 0),
    reserved_for_positions INTEGER NOT NULL DEFAULT 0 CONSTRAINT capital_reserved_for_positions_nonnegative CHECK (reserved_for_positions >= 0),
    realized_pnl           INTEGER NOT NULL DEFAULT 0,
    updated_at_ms          INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT capital_invariant CHECK (allocated - reserved_for_orders - reserved_for_positions + realized_pnl >= 0),
    CONSTRAINT capital_accounts_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;

CREATE TABLE orders (
    order_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id    TEXT NOT NULL CONSTRAINT orders_client_order_id_key UNIQUE,
    user_id            BLOB NOT NULL,
    profile_id         BLOB NOT NULL,
    symbol             TEXT NOT NULL,
    kind               TEXT NOT NULL CONSTRAINT orders_kind_known CHECK (kind IN ('ENTRY', 'EXIT')),
    side               TEXT NOT NULL CONSTRAINT orders_side_known CHECK (side IN ('BUY', 'SELL')),
    qty                INTEGER NOT NULL CONSTRAINT orders_qty_positive CHECK (qty > 0),
    price              INTEGER NOT NULL CONSTRAINT orders_price_positive CHECK (price > 0),
    reserved           INTEGER NOT NULL CONSTRAINT orders_reserved_nonnegative CHECK (reserved >= 0),
    reserved_remaining INTEGER NOT NULL,
    filled_qty         INTEGER NOT NULL DEFAULT 0,
    status             TEXT NOT NULL CONSTRAINT orders_status_known CHECK (status IN
                           ('PENDING_SUBMIT', 'UNKNOWN', 'NEW', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', 'EXPIRED')),
    lock_key           TEXT,
    fence              INTEGER,
    exchange_order_id  TEXT,
    created_at_ms      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    updated_at_ms      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT orders_reserved_remaining_bounded CHECK (reserved_remaining >= 0 AND reserved_remaining <= reserved),
    CONSTRAINT orders_filled_bounded CHECK (filled_qty >= 0 AND filled_qty <= qty),
    CONSTRAINT orders_fence_with_lock CHECK ((lock_key IS NULL) = (fence IS NULL)),
    CONSTRAINT orders_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;
CREATE UNIQUE INDEX orders_one_open_entry ON orders (profile_id, symbol)
    WHERE kind = 'ENTRY' AND status IN ('PENDING_SUBMIT', 'UNKNOWN', 'NEW', 'PARTIALLY_FILLED');

CREATE TABLE fills (
    fill_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id           BLOB NOT NULL,
    profile_id        BLOB NOT NULL,
    symbol            TEXT NOT NULL,
    client_order_id   TEXT NOT NULL REFERENCES orders (client_order_id),
    exchange_trade_id TEXT NOT NULL,
    qty               INTEGER NOT NULL CONSTRAINT fills_qty_positive CHECK (qty > 0),
    price             INTEGER NOT NULL CONSTRAINT fills_price_positive CHECK (price > 0),
    fee               INTEGER NOT NULL CONSTRAINT fills_fee_nonnegative CHECK (fee >= 0),
    executed_at_ms    INTEGER NOT NULL,
    created_at_ms     INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT fills_exchange_trade_key UNIQUE (profile_id, symbol, exchange_trade_id),
    CONSTRAINT fills_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;

CREATE TABLE lifecycles (
    lifecycle_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            BLOB NOT NULL,
    profile_id         BLOB NOT NULL,
    symbol             TEXT NOT NULL,
    kind               TEXT NOT NULL CONSTRAINT lifecycles_kind_known CHECK (kind IN ('ENTRY', 'EXIT')),
    side               TEXT NOT NULL CONSTRAINT lifecycles_side_known CHECK (side IN ('BUY', 'SELL')),
    client_order_id    TEXT NOT NULL CONSTRAINT lifecycles_client_order_id_key UNIQUE REFERENCES orders (client_order_id),
    entry_lifecycle_id INTEGER REFERENCES lifecycles (lifecycle_id),
    qty                INTEGER NOT NULL CONSTRAINT lifecycles_qty_positive CHECK (qty > 0),
    cost               INTEGER NOT NULL CONSTRAINT lifecycles_cost_nonnegative CHECK (cost >= 0),
    proceeds           INTEGER NOT NULL DEFAULT 0,
    realized_pnl       INTEGER NOT NULL DEFAULT 0,
    qty_open           INTEGER NOT NULL DEFAULT 0 CONSTRAINT lifecycles_qty_open_nonnegative CHECK (qty_open >= 0),
    cost_open          INTEGER NOT NULL DEFAULT 0 CONSTRAINT lifecycles_cost_open_nonnegative CHECK (cost_open >= 0),
    is_open            INTEGER NOT NULL CHECK (is_open IN (0, 1)),
    opened_at_ms       INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    updated_at_ms      INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT lifecycles_only_entries_open CHECK (kind = 'ENTRY' OR NOT is_open),
    CONSTRAINT lifecycles_exit_has_entry CHECK ((kind = 'EXIT') = (entry_lifecycle_id IS NOT NULL)),
    CONSTRAINT lifecycles_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;
CREATE UNIQUE INDEX lifecycles_one_open_entry ON lifecycles (profile_id, symbol) WHERE kind = 'ENTRY' AND is_open;

CREATE TABLE trade_history (
    trade_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id           BLOB NOT NULL,
    profile_id        BLOB NOT NULL,
    symbol            TEXT NOT NULL,
    kind              TEXT NOT NULL CONSTRAINT trade_history_kind_known CHECK (kind IN ('ENTRY', 'EXIT')),
    side              TEXT NOT NULL CONSTRAINT trade_history_side_known CHECK (side IN ('BUY', 'SELL')),
    client_order_id   TEXT NOT NULL REFERENCES orders (client_order_id),
    exchange_trade_id TEXT NOT NULL,
    qty               INTEGER NOT NULL,
    price             INTEGER NOT NULL,
    fee               INTEGER NOT NULL,
    realized_pnl      INTEGER NOT NULL,
    executed_at_ms    INTEGER NOT NULL,
    CONSTRAINT trade_history_exchange_trade_key UNIQUE (profile_id, symbol, exchange_trade_id),
    CONSTRAINT trade_history_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;

CREATE TABLE ledger_entries (
    entry_id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id                  BLOB NOT NULL,
    profile_id               BLOB NOT NULL,
    client_order_id          TEXT REFERENCES orders (client_order_id),
    entry_kind               TEXT NOT NULL CONSTRAINT ledger_entries_kind_known CHECK (entry_kind IN
                                 ('ALLOCATE', 'ENTRY_RESERVE', 'FILL', 'CANCEL_RELEASE', 'EXIT', 'FEE', 'REALIZED_PNL')),
    d_allocated              INTEGER NOT NULL DEFAULT 0,
    d_reserved_for_orders    INTEGER NOT NULL DEFAULT 0,
    d_reserved_for_positions INTEGER NOT NULL DEFAULT 0,
    d_realized_pnl           INTEGER NOT NULL DEFAULT 0,
    dedup_key                TEXT NOT NULL,
    created_at_ms            INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    CONSTRAINT ledger_entries_dedup_key UNIQUE (profile_id, dedup_key),
    CONSTRAINT ledger_entries_order_reference CHECK ((entry_kind = 'ALLOCATE') = (client_order_id IS NULL)),
    CONSTRAINT ledger_entries_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
) STRICT;
CREATE INDEX ledger_entries_profile ON ledger_entries (profile_id);

CREATE TRIGGER ledger_entries_append_only_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries_append_only: ledger_entries is append-only: UPDATE refused');
END;
CREATE TRIGGER ledger_entries_append_only_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries_append_only: ledger_entries is append-only: DELETE refused');
END;

-- The fence sequence: one row whose value only grows.
CREATE TABLE lock_fence_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
) STRICT;
INSERT INTO lock_fence_seq (id, value) VALUES (1, 0);
CREATE TRIGGER lock_fence_seq_only_grows BEFORE UPDATE ON lock_fence_seq
    WHEN NEW.value <= OLD.value
BEGIN
    SELECT RAISE(ABORT, 'locks_fence_only_grows: the fence sequence only grows');
END;
CREATE TRIGGER lock_fence_seq_no_delete BEFORE DELETE ON lock_fence_seq
BEGIN
    SELECT RAISE(ABORT, 'locks_fence_only_grows: the fence sequence cannot be deleted');
END;

CREATE TABLE entry_locks (
    lock_key       TEXT PRIMARY KEY,
    owner_token    BLOB NOT NULL,
    fence          INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE reconciliation_locks (
    lock_key       TEXT PRIMARY KEY,
    owner_token    BLOB NOT NULL,
    fence          INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE profile_leases (
    lock_key       TEXT PRIMARY KEY,
    owner_token    BLOB NOT NULL,
    fence          INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL
) STRICT;
CREATE TRIGGER entry_locks_fence_only_grows BEFORE UPDATE ON entry_locks WHEN NEW.fence < OLD.fence
BEGIN
    SELECT RAISE(ABORT, 'locks_fence_only_grows: a fence cannot decrease');
END;
CREATE TRIGGER reconciliation_locks_fence_only_grows BEFORE UPDATE ON reconciliation_locks WHEN NEW.fence < OLD.fence
BEGIN
    SELECT RAISE(ABORT, 'locks_fence_only_grows: a fence cannot decrease');
END;
CREATE TRIGGER profile_leases_fence_only_grows BEFORE UPDATE ON profile_leases WHEN NEW.fence < OLD.fence
BEGIN
    SELECT RAISE(ABORT, 'locks_fence_only_grows: a fence cannot decrease');
END;

CREATE TRIGGER orders_current_fence BEFORE INSERT ON orders
    WHEN NEW.lock_key IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM entry_locks
        WHERE lock_key = NEW.lock_key AND fence = NEW.fence
          AND expires_at_ms > CAST(unixepoch('subsec') * 1000 AS INTEGER)
    )
BEGIN
    SELECT RAISE(ABORT, 'orders_current_fence: stale fence for the entry lock');
END;
