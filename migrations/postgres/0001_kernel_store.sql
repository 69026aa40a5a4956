-- Keel kernel store: tenant tables, the capital ledger, orders, fills, lifecycles, trade history
-- and the coordination tables (lease locks). Run by the owner role (`database.admin_url`).
--
-- Money is NUMERIC(30, 8): exact, and the kernel refuses any amount with more than 8 decimal
-- places or larger than its per-account limit before it reaches the database.

-- The role the host runs as is a member of keel_app. keel_app owns nothing and has neither
-- SUPERUSER nor BYPASSRLS; it receives exactly the privileges granted at the end of this file.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keel_app') THEN
        CREATE ROLE keel_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$$;

-- Milliseconds since the Unix epoch by the database clock: lock TTLs are measured here, never by
-- the clocks of the host instances.
CREATE FUNCTION keel_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE profiles (
    profile_id    uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    name          text NOT NULL CONSTRAINT profiles_name_length CHECK (length(name) BETWEEN 1 AND 64),
    created_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    -- Children reference (profile_id, user_id), so a child row always carries its profile's owner.
    CONSTRAINT profiles_owner_key UNIQUE (profile_id, user_id)
);

CREATE TABLE capital_accounts (
    profile_id             uuid PRIMARY KEY,
    user_id                uuid NOT NULL,
    allocated              numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT capital_allocated_nonnegative CHECK (allocated >= 0),
    reserved_for_orders    numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT capital_reserved_for_orders_nonnegative CHECK (reserved_for_orders >= 0),
    reserved_for_positions numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT capital_reserved_for_positions_nonnegative CHECK (reserved_for_positions >= 0),
    realized_pnl           numeric(30, 8) NOT NULL DEFAULT 0,
    updated_at_ms          bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT capital_invariant CHECK (allocated - reserved_for_orders - reserved_for_positions + realized_pnl >= 0),
    CONSTRAINT capital_accounts_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);

CREATE TABLE orders (
    order_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_order_id    text NOT NULL CONSTRAINT orders_client_order_id_key UNIQUE,
    user_id            uuid NOT NULL,
    profile_id         uuid NOT NULL,
    symbol             text NOT NULL,
    kind               text NOT NULL CONSTRAINT orders_kind_known CHECK (kind IN ('ENTRY', 'EXIT')),
    side               text NOT NULL CONSTRAINT orders_side_known CHECK (side IN ('BUY', 'SELL')),
    qty                numeric(30, 8) NOT NULL CONSTRAINT orders_qty_positive CHECK (qty > 0),
    price              numeric(30, 8) NOT NULL CONSTRAINT orders_price_positive CHECK (price > 0),
    reserved           numeric(30, 8) NOT NULL CONSTRAINT orders_reserved_nonnegative CHECK (reserved >= 0),
    reserved_remaining numeric(30, 8) NOT NULL,
    filled_qty         numeric(30, 8) NOT NULL DEFAULT 0,
    status             text NOT NULL CONSTRAINT orders_status_known CHECK (status IN
                           ('PENDING_SUBMIT', 'UNKNOWN', 'NEW', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', 'EXPIRED')),
    lock_key           text,
    fence              bigint,
    exchange_order_id  text,
    created_at_ms      bigint NOT NULL DEFAULT keel_now_ms(),
    updated_at_ms      bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT orders_reserved_remaining_bounded CHECK (reserved_remaining >= 0 AND reserved_remaining <= reserved),
    CONSTRAINT orders_filled_bounded CHECK (filled_qty >= 0 AND filled_qty <= qty),
    CONSTRAINT orders_fence_with_lock CHECK ((lock_key IS NULL) = (fence IS NULL)),
    CONSTRAINT orders_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);
-- At most one ENTRY order in flight per (profile, symbol).
CREATE UNIQUE INDEX orders_one_open_entry ON orders (profile_id, symbol)
    WHERE kind = 'ENTRY' AND status IN ('PENDING_SUBMIT', 'UNKNOWN', 'NEW', 'PARTIALLY_FILLED');

CREATE TABLE fills (
    fill_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id           uuid NOT NULL,
    profile_id        uuid NOT NULL,
    symbol            text NOT NULL,
    client_order_id   text NOT NULL REFERENCES orders (client_order_id),
    exchange_trade_id text NOT NULL,
    qty               numeric(30, 8) NOT NULL CONSTRAINT fills_qty_positive CHECK (qty > 0),
    price             numeric(30, 8) NOT NULL CONSTRAINT fills_price_positive CHECK (price > 0),
    fee               numeric(30, 8) NOT NULL CONSTRAINT fills_fee_nonnegative CHECK (fee >= 0),
    executed_at_ms    bigint NOT NULL,
    created_at_ms     bigint NOT NULL DEFAULT keel_now_ms(),
    -- Exchange trade ids are unique per symbol on an exchange account; a replayed fill is a no-op.
    CONSTRAINT fills_exchange_trade_key UNIQUE (profile_id, symbol, exchange_trade_id),
    CONSTRAINT fills_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);

-- ENTRY and EXIT lifecycle rows. Written only when the exchange reports a fill.
CREATE TABLE lifecycles (
    lifecycle_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            uuid NOT NULL,
    profile_id         uuid NOT NULL,
    symbol             text NOT NULL,
    kind               text NOT NULL CONSTRAINT lifecycles_kind_known CHECK (kind IN ('ENTRY', 'EXIT')),
    side               text NOT NULL CONSTRAINT lifecycles_side_known CHECK (side IN ('BUY', 'SELL')),
    client_order_id    text NOT NULL CONSTRAINT lifecycles_client_order_id_key UNIQUE REFERENCES orders (client_order_id),
    entry_lifecycle_id bigint REFERENCES lifecycles (lifecycle_id),
    qty                numeric(30, 8) NOT NULL CONSTRAINT lifecycles_qty_positive CHECK (qty > 0),
    cost               numeric(30, 8) NOT NULL CONSTRAINT lifecycles_cost_nonnegative CHECK (cost >= 0),
    proceeds           numeric(30, 8) NOT NULL DEFAULT 0,
    realized_pnl       numeric(30, 8) NOT NULL DEFAULT 0,
    qty_open           numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT lifecycles_qty_open_nonnegative CHECK (qty_open >= 0),
    cost_open          numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT lifecycles_cost_open_nonnegative CHECK (cost_open >= 0),
    is_open            boolean NOT NULL,
    opened_at_ms       bigint NOT NULL DEFAULT keel_now_ms(),
    updated_at_ms      bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT lifecycles_only_entries_open CHECK (kind = 'ENTRY' OR NOT is_open),
    CONSTRAINT lifecycles_exit_has_entry CHECK ((kind = 'EXIT') = (entry_lifecycle_id IS NOT NULL)),
    CONSTRAINT lifecycles_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);
-- At most one open ENTRY (position) per (profile, symbol).
CREATE UNIQUE INDEX lifecycles_one_open_entry ON lifecycles (profile_id, symbol) WHERE kind = 'ENTRY' AND is_open;

CREATE TABLE trade_history (
    trade_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id           uuid NOT NULL,
    profile_id        uuid NOT NULL,
    symbol            text NOT NULL,
    kind              text NOT NULL CONSTRAINT trade_history_kind_known CHECK (kind IN ('ENTRY', 'EXIT')),
    side              text NOT NULL CONSTRAINT trade_history_side_known CHECK (side IN ('BUY', 'SELL')),
    client_order_id   text NOT NULL REFERENCES orders (client_order_id),
    exchange_trade_id text NOT NULL,
    qty               numeric(30, 8) NOT NULL,
    price             numeric(30, 8) NOT NULL,
    fee               numeric(30, 8) NOT NULL,
    realized_pnl      numeric(30, 8) NOT NULL,
    executed_at_ms    bigint NOT NULL,
    CONSTRAINT trade_history_exchange_trade_key UNIQUE (profile_id, symbol, exchange_trade_id),
    CONSTRAINT trade_history_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);

-- The append-only journal. The capital row equals the sum of its deltas.
CREATE TABLE ledger_entries (
    entry_id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                  uuid NOT NULL,
    profile_id               uuid NOT NULL,
    client_order_id          text REFERENCES orders (client_order_id),
    entry_kind               text NOT NULL CONSTRAINT ledger_entries_kind_known CHECK (entry_kind IN
                                 ('ALLOCATE', 'ENTRY_RESERVE', 'FILL', 'CANCEL_RELEASE', 'EXIT', 'FEE', 'REALIZED_PNL')),
    d_allocated              numeric(30, 8) NOT NULL DEFAULT 0,
    d_reserved_for_orders    numeric(30, 8) NOT NULL DEFAULT 0,
    d_reserved_for_positions numeric(30, 8) NOT NULL DEFAULT 0,
    d_realized_pnl           numeric(30, 8) NOT NULL DEFAULT 0,
    -- What makes a journal move happen at most once: "reserve:<coid>", "fill:<trade>", ...
    dedup_key                text NOT NULL,
    created_at_ms            bigint NOT NULL DEFAULT keel_now_ms(),
    CONSTRAINT ledger_entries_dedup_key UNIQUE (profile_id, dedup_key),
    CONSTRAINT ledger_entries_order_reference CHECK ((entry_kind = 'ALLOCATE') = (client_order_id IS NULL)),
    CONSTRAINT ledger_entries_profile_fkey FOREIGN KEY (profile_id, user_id) REFERENCES profiles (profile_id, user_id)
);
CREATE INDEX ledger_entries_profile ON ledger_entries (profile_id);

CREATE FUNCTION ledger_entries_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation', CONSTRAINT = 'ledger_entries_append_only';
END
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change();

-- Coordination: lease locks. A fence comes from one sequence and so only grows, also across a
-- release (a deleted row) and a later acquisition.
CREATE SEQUENCE lock_fence_seq AS bigint MINVALUE 1 NO CYCLE;

CREATE TABLE entry_locks (
    lock_key       text PRIMARY KEY,
    owner_token    uuid NOT NULL,
    fence          bigint NOT NULL,
    expires_at_ms  bigint NOT NULL,
    acquired_at_ms bigint NOT NULL
);
CREATE TABLE reconciliation_locks (LIKE entry_locks INCLUDING ALL);
CREATE TABLE profile_leases (LIKE entry_locks INCLUDING ALL);

CREATE FUNCTION locks_refuse_fence_decrease() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.fence < OLD.fence THEN
        RAISE EXCEPTION 'fence of % cannot go from % to %', OLD.lock_key, OLD.fence, NEW.fence
            USING ERRCODE = 'check_violation', CONSTRAINT = 'locks_fence_only_grows';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER entry_locks_fence_only_grows BEFORE UPDATE ON entry_locks
    FOR EACH ROW EXECUTE FUNCTION locks_refuse_fence_decrease();
CREATE TRIGGER reconciliation_locks_fence_only_grows BEFORE UPDATE ON reconciliation_locks
    FOR EACH ROW EXECUTE FUNCTION locks_refuse_fence_decrease();
CREATE TRIGGER profile_leases_fence_only_grows BEFORE UPDATE ON profile_leases
    FOR EACH ROW EXECUTE FUNCTION locks_refuse_fence_decrease();

-- A write-ahead order made under a lock must carry the lock's current fence, checked inside the
-- inserting transaction: a holder that lost its lock cannot write. The lock row is then held
-- FOR SHARE until commit, so no new acquisition can slip in before the order is committed.
CREATE FUNCTION orders_require_current_fence() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.lock_key IS NOT NULL THEN
        PERFORM 1 FROM entry_locks
        WHERE lock_key = NEW.lock_key AND fence = NEW.fence AND expires_at_ms > keel_now_ms()
        FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'stale fence % for lock %', NEW.fence, NEW.lock_key
                USING ERRCODE = 'check_violation', CONSTRAINT = 'orders_current_fence';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_current_fence BEFORE INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_require_current_fence();

-- Tenant isolation: every tenant table has RLS enabled and forced (the owner too), keyed on the
-- Supabase/PostgREST transaction-local setting request.jwt.claims. No claims, no rows. The
-- claims are read in a sub-SELECT so that they are parsed once per statement, not once per row.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['profiles', 'capital_accounts', 'orders', 'fills', 'lifecycles',
                             'trade_history', 'ledger_entries']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY %I ON %I FOR ALL '
            'USING (user_id = (SELECT (nullif(current_setting(''request.jwt.claims'', true), '''')::json ->> ''sub'')::uuid)) '
            'WITH CHECK (user_id = (SELECT (nullif(current_setting(''request.jwt.claims'', true), '''')::json ->> ''sub'')::uuid))',
            t || '_tenant', t);
    END LOOP;
END
$$;

-- Privileges of the host role. The journal, fills and trade history are insert-only.
GRANT USAGE ON SCHEMA public TO keel_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON profiles TO keel_app;
GRANT SELECT, INSERT, UPDATE ON capital_accounts, orders, lifecycles TO keel_app;
GRANT SELECT, INSERT ON fills, trade_history, ledger_entries TO keel_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON entry_locks, reconciliation_locks, profile_leases TO keel_app;
GRANT USAGE ON SEQUENCE lock_fence_seq TO keel_app;
GRANT EXECUTE ON FUNCTION keel_now_ms() TO keel_app;
