-- Capital has an authority: an operator grants each user a budget, and a user's allocations to
-- their own profiles draw on it. A grant is a row of the append-only `budget_grants` journal (a
-- negative amount takes back what is not allocated); every ALLOCATE entry of `ledger_entries`
-- draws on its owner's budget. Triggers keep `capital_budgets` equal to its journals, and its
-- CHECK refuses an allocation beyond the grant, or an allocation by a user with no budget at all.
--
-- The host role may read both tables and insert grants only under operator claims; it may not
-- write `capital_budgets` itself: only the triggers (SECURITY DEFINER, run as the owner) do.
CREATE TABLE capital_budgets (
    user_id       uuid PRIMARY KEY,
    granted       numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT capital_budgets_granted_nonnegative CHECK (granted >= 0),
    allocated     numeric(30, 8) NOT NULL DEFAULT 0 CONSTRAINT capital_budgets_allocated_nonnegative CHECK (allocated >= 0),
    updated_at_ms bigint NOT NULL DEFAULT keel_now_ms(),
    -- The kernel's limit of one capital column (10^10 quote).
    CONSTRAINT capital_budgets_granted_bounded CHECK (granted <= 10000000000),
    CONSTRAINT capital_budgets_within_grant CHECK (allocated <= granted)
);

CREATE TABLE budget_grants (
    grant_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       uuid NOT NULL,
    -- The operator who granted it.
    operator_id   uuid NOT NULL,
    amount        numeric(30, 8) NOT NULL CONSTRAINT budget_grants_amount_nonzero CHECK (amount <> 0),
    created_at_ms bigint NOT NULL DEFAULT keel_now_ms()
);
CREATE INDEX budget_grants_user ON budget_grants (user_id);

CREATE FUNCTION budget_grants_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'budget_grants is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation', CONSTRAINT = 'budget_grants_append_only';
END
$$;
CREATE TRIGGER budget_grants_append_only BEFORE UPDATE OR DELETE ON budget_grants
    FOR EACH ROW EXECUTE FUNCTION budget_grants_refuse_change();
CREATE TRIGGER budget_grants_no_truncate BEFORE TRUNCATE ON budget_grants
    FOR EACH STATEMENT EXECUTE FUNCTION budget_grants_refuse_change();

-- A grant moves its user's budget.
CREATE FUNCTION budget_grants_apply() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    -- Two statements: an upsert would check the CHECKs on the row it proposes (a negative grant).
    INSERT INTO capital_budgets (user_id) VALUES (NEW.user_id) ON CONFLICT (user_id) DO NOTHING;
    UPDATE capital_budgets SET granted = granted + NEW.amount, updated_at_ms = keel_now_ms()
        WHERE user_id = NEW.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER budget_grants_apply AFTER INSERT ON budget_grants
    FOR EACH ROW EXECUTE FUNCTION budget_grants_apply();

-- An allocation draws on its owner's budget; a user without one allocates nothing.
CREATE FUNCTION ledger_entries_draw_budget() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE capital_budgets
        SET allocated = allocated + NEW.d_allocated, updated_at_ms = keel_now_ms()
        WHERE user_id = NEW.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % has no capital budget', NEW.user_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'capital_budgets_within_grant';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_entries_draw_budget AFTER INSERT ON ledger_entries
    FOR EACH ROW WHEN (NEW.entry_kind = 'ALLOCATE') EXECUTE FUNCTION ledger_entries_draw_budget();

-- Row-level security: a user reads their own budget and grants; an operator reads every one and
-- inserts grants. RLS is enabled, not forced: the triggers run as the owner.
ALTER TABLE capital_budgets ENABLE ROW LEVEL SECURITY;
ALTER TABLE budget_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY capital_budgets_tenant_read ON capital_budgets FOR SELECT
    USING (user_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid));
CREATE POLICY capital_budgets_operator_read ON capital_budgets FOR SELECT
    USING ((SELECT nullif(current_setting('request.jwt.claims', true), '')::json -> 'app_metadata' ->> 'keel_role') = 'operator');
CREATE POLICY budget_grants_tenant_read ON budget_grants FOR SELECT
    USING (user_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid));
CREATE POLICY budget_grants_operator ON budget_grants FOR ALL
    USING ((SELECT nullif(current_setting('request.jwt.claims', true), '')::json -> 'app_metadata' ->> 'keel_role') = 'operator')
    WITH CHECK ((SELECT nullif(current_setting('request.jwt.claims', true), '')::json -> 'app_metadata' ->> 'keel_role') = 'operator'
                AND operator_id = (SELECT (nullif(current_setting('request.jwt.claims', true), '')::json ->> 'sub')::uuid));

GRANT SELECT ON capital_budgets TO keel_app;
GRANT SELECT, INSERT ON budget_grants TO keel_app;

-- What existed before budgets keeps its allocations: each user is granted exactly what their
-- profiles hold, by the nil operator ("granted at migration").
INSERT INTO budget_grants (user_id, operator_id, amount)
    SELECT user_id, '00000000-0000-0000-0000-000000000000', SUM(d_allocated)
    FROM ledger_entries WHERE entry_kind = 'ALLOCATE' GROUP BY user_id HAVING SUM(d_allocated) <> 0;
UPDATE capital_budgets SET allocated = granted;
