-- A row that belongs to an order belongs to the order's profile (see the PostgreSQL migration).
-- SQLite cannot add a foreign key to an existing table: triggers named as PostgreSQL's
-- constraints refuse a fill, lifecycle, trade or journal row whose (profile_id,
-- client_order_id) is not an order's.
CREATE TRIGGER fills_order_fkey BEFORE INSERT ON fills
    WHEN NOT EXISTS (SELECT 1 FROM orders
                     WHERE client_order_id = NEW.client_order_id AND profile_id = NEW.profile_id)
BEGIN
    SELECT RAISE(ABORT, 'fills_order_fkey: the order is not the profile''s');
END;
CREATE TRIGGER lifecycles_order_fkey BEFORE INSERT ON lifecycles
    WHEN NOT EXISTS (SELECT 1 FROM orders
                     WHERE client_order_id = NEW.client_order_id AND profile_id = NEW.profile_id)
BEGIN
    SELECT RAISE(ABORT, 'lifecycles_order_fkey: the order is not the profile''s');
END;
CREATE TRIGGER lifecycles_order_fkey_update BEFORE UPDATE OF profile_id, client_order_id ON lifecycles
    WHEN NOT EXISTS (SELECT 1 FROM orders
                     WHERE client_order_id = NEW.client_order_id AND profile_id = NEW.profile_id)
BEGIN
    SELECT RAISE(ABORT, 'lifecycles_order_fkey: the order is not the profile''s');
END;
CREATE TRIGGER trade_history_order_fkey BEFORE INSERT ON trade_history
    WHEN NOT EXISTS (SELECT 1 FROM orders
                     WHERE client_order_id = NEW.client_order_id AND profile_id = NEW.profile_id)
BEGIN
    SELECT RAISE(ABORT, 'trade_history_order_fkey: the order is not the profile''s');
END;
CREATE TRIGGER ledger_entries_order_fkey BEFORE INSERT ON ledger_entries
    WHEN NEW.client_order_id IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM orders
                     WHERE client_order_id = NEW.client_order_id AND profile_id = NEW.profile_id)
BEGIN
    SELECT RAISE(ABORT, 'ledger_entries_order_fkey: the order is not the profile''s');
END;
