-- A row that belongs to an order belongs to the order's profile: fills, lifecycles, trade
-- history and journal entries reference their order by (profile_id, client_order_id), so the
-- database refuses a row of one profile that names another profile's order (before this, the
-- client order id alone was the key, and a row could carry any profile of its owner).
ALTER TABLE orders ADD CONSTRAINT orders_profile_order_key UNIQUE (profile_id, client_order_id);

ALTER TABLE fills DROP CONSTRAINT fills_client_order_id_fkey,
    ADD CONSTRAINT fills_order_fkey FOREIGN KEY (profile_id, client_order_id)
        REFERENCES orders (profile_id, client_order_id);
ALTER TABLE lifecycles DROP CONSTRAINT lifecycles_client_order_id_fkey,
    ADD CONSTRAINT lifecycles_order_fkey FOREIGN KEY (profile_id, client_order_id)
        REFERENCES orders (profile_id, client_order_id);
ALTER TABLE trade_history DROP CONSTRAINT trade_history_client_order_id_fkey,
    ADD CONSTRAINT trade_history_order_fkey FOREIGN KEY (profile_id, client_order_id)
        REFERENCES orders (profile_id, client_order_id);
-- An ALLOCATE entry has no order (NULL): MATCH SIMPLE skips it.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_client_order_id_fkey,
    ADD CONSTRAINT ledger_entries_order_fkey FOREIGN KEY (profile_id, client_order_id)
        REFERENCES orders (profile_id, client_order_id);
