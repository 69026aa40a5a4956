//! The store contract, run against PostgreSQL, SQLite and the memory store alike. Writes made
//! outside the store API (constraint probes, tampering) are SQL on a database and the same
//! write planted into the rows of the memory store ([`Harness::write_outside`]).

use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, UserId};
use keel_kernel::ledger::{Budget, Capital, LedgerError};
use keel_kernel::ledger::{CapitalDelta, JournalKind};
use keel_kernel::lifecycle::OrderRecord;
use keel_kernel::lifecycle::{FillOutcome, LifecycleError, StatusOutcome, WriteAhead};
use keel_kernel::lock::{LockError, LockKey, LockKind, OwnerToken};
use keel_kernel::market::Side;
use keel_kernel::money::{Amount, Price, Qty, decimal_from_f64};
use keel_kernel::order::OrderStatus;
use keel_kernel::store::{
    Backend, Constraint, DirectoryEntry, HOST_OPERATOR, LeaseGuard, QUARANTINE_EVIDENCE_ITEMS_MAX,
    QUARANTINE_EVIDENCE_TEXT_LEN_MAX, QUARANTINE_REASON_LEN_MAX, QuarantineEvidence, RowWrite,
    StoreError,
};

use crate::fixtures::*;
use crate::support::Harness;

keel_testkit::contract_tests!(
    allocation_is_journaled_and_rebuild_finds_no_difference,
    allocations_beyond_the_budget_are_refused_by_the_kernel_and_by_the_database,
    a_row_naming_another_profiles_order_is_refused,
    a_store_guarded_by_a_profile_lease_sees_only_that_profiles_orders,
    one_running_profile_claims_each_symbol_of_an_exchange_account,
    entry_is_refused_when_capital_is_insufficient,
    bad_amounts_and_unknown_profiles_are_refused_with_typed_errors,
    write_ahead_replay_is_a_noop_and_a_different_payload_is_refused,
    entry_and_exit_lifecycle_moves_capital_and_writes_rows_only_on_fills,
    fill_replay_changes_nothing_and_a_different_fill_under_its_trade_id_is_refused,
    cancel_releases_the_reservation_exactly_once,
    unknown_order_keeps_its_reservation_until_resolved,
    second_entry_for_a_symbol_is_refused_while_one_is_in_flight,
    write_with_a_stale_fence_is_refused_by_the_kernel_and_by_the_database,
    lease_contention_renewal_release_and_fences_that_only_grow,
    lease_expires_by_the_database_clock,
    a_lease_taken_in_a_transaction_exists_only_if_it_commits,
    live_leases_are_counted_by_key_prefix,
    database_check_refuses_a_capital_row_that_breaks_the_invariant,
    rows_the_money_types_refuse_are_a_typed_error_when_read,
    journal_refuses_update_and_delete,
    rebuild_reports_and_repairs_a_tampered_capital_row,
    unique_keys_refuse_duplicate_rows_in_the_database,
    another_tenant_cannot_see_or_touch_a_profile_or_its_orders,
    exits_beyond_the_position_are_refused,
    a_write_under_a_profile_lease_taken_over_is_refused_in_its_own_transaction,
    the_directory_lists_every_tenants_profiles,
    a_quarantine_is_stored_asked_to_end_and_kept_as_history,
    a_second_open_quarantine_is_refused_by_the_database,
);

async fn allocation_is_journaled_and_rebuild_finds_no_difference(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100.5").await;
    let tenant = h.store.tenant(user);
    let capital = tenant
        .allocate(profile, Amount::positive(d("0.00000001")).unwrap())
        .await
        .unwrap();
    assert_eq!(capital.allocated.get(), d("100.50000001"));
    let report = tenant.rebuild_capital(profile, false).await.unwrap();
    assert!(!report.differs(), "{report:?}");
    assert_eq!(report.journal, capital);
}

/// Capital has an authority: a user's allocations draw on the budget operators granted them.
/// The kernel refuses first (a typed error, counted); an allocation written past the kernel is
/// refused by the database's trigger and CHECK (the memory store's rows check the same).
async fn allocations_beyond_the_budget_are_refused_by_the_kernel_and_by_the_database(h: &Harness) {
    let user = UserId::new_random();
    let tenant = h.store.tenant(user);
    let profile = tenant.create_profile("budgeted").await.unwrap();
    let amount = |text: &str| Amount::positive(d(text)).unwrap();
    let over_budget = |result: Result<Capital, StoreError>| {
        matches!(
            result,
            Err(StoreError::Ledger(LedgerError::OverBudget { .. }))
        )
    };
    assert!(over_budget(tenant.allocate(profile, amount("1")).await));
    let operator = h.store.operator(HOST_OPERATOR);
    let granted = operator.grant_budget(user, d("100")).await.unwrap();
    assert_eq!(
        granted,
        Budget {
            granted: d("100"),
            allocated: d("0")
        }
    );
    tenant.allocate(profile, amount("60")).await.unwrap();
    let before = h.store.stats().snapshot();
    let refused = tenant.allocate(profile, amount("40.00000001")).await;
    assert!(over_budget(refused), "the kernel refuses first");
    let after = h.store.stats().snapshot();
    assert_eq!(
        after.budget_check_refusals,
        before.budget_check_refusals + 1
    );
    assert_eq!(
        after.budget_constraint_violations,
        before.budget_constraint_violations
    );
    assert_eq!(
        tenant.capital(profile).await.unwrap().allocated.get(),
        d("60")
    );
    let budget = operator.budget(user).await.unwrap();
    assert_eq!((budget.granted, budget.allocated), (d("100"), d("60")));
    assert_eq!(
        tenant.begin().await.unwrap().budget().await.unwrap(),
        budget
    );

    // An operator takes back only what is not allocated.
    assert!(matches!(
        operator.grant_budget(user, d("-40.00000001")).await,
        Err(StoreError::Ledger(LedgerError::GrantOutOfRange { .. }))
    ));
    let taken_back = operator.grant_budget(user, d("-30")).await.unwrap();
    assert_eq!(taken_back.available(), d("10"));

    // Past the kernel: an ALLOCATE entry as large as what the profile holds (60 > 10 left), and
    // one by a user who was never granted a budget.
    let stranger = UserId::new_random();
    let unbudgeted = h
        .store
        .tenant(stranger)
        .create_profile("unbudgeted")
        .await
        .unwrap();
    for (owner, target, allocated) in [(user, profile, d("60")), (stranger, unbudgeted, d("0"))] {
        let sql = format!(
            "INSERT INTO ledger_entries (user_id, profile_id, entry_kind, d_allocated, dedup_key) \
             SELECT user_id, profile_id, 'ALLOCATE', allocated + 1, 'planted' \
             FROM capital_accounts WHERE profile_id = {}",
            profile_literal(h, target)
        );
        let planted = RowWrite::Journal {
            profile: target,
            order: None,
            kind: JournalKind::Allocate,
            delta: CapitalDelta {
                allocated: allocated + d("1"),
                ..CapitalDelta::default()
            },
            dedup_key: "planted".to_owned(),
        };
        let refused = h.write_outside(owner, &sql, planted).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Constraint(Constraint::Budget(name)) if name == "capital_budgets_within_grant"),
            "{refused:?}"
        );
    }
    assert_eq!(operator.budget(user).await.unwrap(), taken_back);
    assert_eq!(operator.budget(stranger).await.unwrap(), Budget::default());
}

/// Two funded profiles of one owner, the first with an ENTRY written ahead: (owner, first,
/// second, the entry's client order id).
async fn siblings_with_an_order(h: &Harness) -> (UserId, ProfileId, ProfileId, ClientOrderId) {
    let user = UserId::new_random();
    let owner = funded_profile(&h.store, user, "1000").await;
    let sibling = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, owner, &s).await;
    let request = entry(&lease, owner, &s, 1, "1", "100");
    h.store
        .tenant(user)
        .write_ahead_entry(&request)
        .await
        .unwrap();
    (user, owner, sibling, request.client_order_id)
}

/// Two profiles of one owner: a journal entry or a fill of one that names the other's order is
/// refused by the database (by `(profile_id, client_order_id)`), and on the memory store by its
/// rows.
async fn a_row_naming_another_profiles_order_is_refused(h: &Harness) {
    let (user, _, sibling, coid) = siblings_with_an_order(h).await;
    let sibling_literal = profile_literal(h, sibling);
    let journal = format!(
        "INSERT INTO ledger_entries (user_id, profile_id, client_order_id, entry_kind, \
         d_reserved_for_orders, dedup_key) SELECT user_id, {sibling_literal}, client_order_id, \
         'ENTRY_RESERVE', 0, 'cross' FROM orders WHERE client_order_id = '{coid}'"
    );
    let planted = RowWrite::Journal {
        profile: sibling,
        order: Some(coid.clone()),
        kind: JournalKind::EntryReserve,
        delta: CapitalDelta::default(),
        dedup_key: "cross".to_owned(),
    };
    let refused = h.write_outside(user, &journal, planted).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Constraint(Constraint::OrderOfAnotherProfile(name)) if name == "ledger_entries_order_fkey"),
        "{refused:?}"
    );
    // The memory store plants fills through their order, which carries its own profile: the
    // fill row of another profile is a database case.
    if h.store.backend() != keel_kernel::store::Backend::Memory {
        let fill_sql = format!(
            "INSERT INTO fills (user_id, profile_id, symbol, client_order_id, exchange_trade_id, \
             qty, price, fee, executed_at_ms) SELECT user_id, {sibling_literal}, symbol, \
             client_order_id, 'cross', qty, price, 0, 0 FROM orders WHERE client_order_id = '{coid}'"
        );
        let refused = h.raw(user, &fill_sql).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Constraint(Constraint::OrderOfAnotherProfile(name)) if name == "fills_order_fkey"),
            "{refused:?}"
        );
    }
    let sibling_capital = h.store.tenant(user).capital(sibling).await.unwrap();
    assert_eq!(sibling_capital.reserved_for_orders.get(), d("0"));
}

/// An engine's store is guarded by its profile's lease: through it, a sibling profile's order
/// (same owner, same exchange account) is not there — neither read nor filled — so no engine
/// applies another profile's events under its own lease.
async fn a_store_guarded_by_a_profile_lease_sees_only_that_profiles_orders(h: &Harness) {
    let (user, owner, sibling, coid) = siblings_with_an_order(h).await;
    let sibling_lease = h
        .store
        .locks()
        .acquire(
            LockKind::ProfileLease,
            &LockKey::profile(sibling),
            OwnerToken::new_random(),
            60_000,
        )
        .await
        .unwrap()
        .unwrap();
    let guarded = h.store.guarded_by(LeaseGuard::of(sibling, &sibling_lease));
    assert!(guarded.tenant(user).order(&coid).await.unwrap().is_none());
    let refused = guarded
        .tenant(user)
        .record_fill(&fill(&coid, "t1", "1", "100", "0"))
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Lifecycle(LifecycleError::UnknownOrder(_)))
        ),
        "{refused:?}"
    );
    let order = h.store.tenant(user).order(&coid).await.unwrap().unwrap();
    assert_eq!(order.filled_qty.get(), d("0"), "the sibling filled nothing");
    // The owner's own guarded store sees and fills it.
    let owner_lease = h
        .store
        .locks()
        .acquire(
            LockKind::ProfileLease,
            &LockKey::profile(owner),
            OwnerToken::new_random(),
            60_000,
        )
        .await
        .unwrap()
        .unwrap();
    let own = h.store.guarded_by(LeaseGuard::of(owner, &owner_lease));
    own.tenant(user)
        .record_fill(&fill(&coid, "t1", "1", "100", "0"))
        .await
        .unwrap();
}

/// An exchange account holds one position per symbol: while a profile holding a live lease
/// claims (account, symbol), no other profile can; a claim of a profile that stopped (its lease
/// released) is taken over; moving to paper gives every claim up.
async fn one_running_profile_claims_each_symbol_of_an_exchange_account(h: &Harness) {
    use keel_kernel::store::{HOST_ACCOUNT, owner_account};
    let (first, second) = (ProfileId::new_random(), ProfileId::new_random());
    let (btc, eth) = (sym("BTCUSDT"), sym("ETHUSDT"));
    if h.store.backend() == keel_kernel::store::Backend::Memory {
        let unsupported = h
            .store
            .claim_account(first, Some(HOST_ACCOUNT), &[btc])
            .await;
        assert!(matches!(
            unsupported,
            Err(StoreError::UnsupportedOnMemory(_))
        ));
        return;
    }
    let locks = h.store.locks();
    let lease_of = |profile| {
        let locks = &locks;
        async move {
            locks
                .acquire(
                    LockKind::ProfileLease,
                    &LockKey::profile(profile),
                    OwnerToken::new_random(),
                    60_000,
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    let first_lease = lease_of(first).await;
    let _second_lease = lease_of(second).await;
    let both = [btc.clone(), eth.clone()];
    let claim = |profile, account: Option<&'static str>, symbols: &'static [&'static str]| {
        let store = &h.store;
        async move {
            let symbols: Vec<_> = symbols.iter().map(|s| sym(s)).collect();
            store
                .claim_account(profile, account, &symbols)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        h.store
            .claim_account(first, Some(HOST_ACCOUNT), &both)
            .await
            .unwrap(),
        None
    );
    // Claiming again (a restart, a takeover by another instance) is the same claim.
    assert_eq!(claim(first, Some(HOST_ACCOUNT), &["BTCUSDT"]).await, None);
    // All or nothing: ETHUSDT is held, so SOLUSDT is not claimed either.
    assert_eq!(
        claim(second, Some(HOST_ACCOUNT), &["SOLUSDT", "ETHUSDT"]).await,
        Some(eth.clone())
    );
    // Another account's symbols are free; an owner's account is named by its key's digest.
    let owner = owner_account("owner-key");
    assert!(owner.starts_with("key:") && !owner.contains("owner-key"));
    assert_eq!(
        h.store
            .claim_account(second, Some(&owner), &both)
            .await
            .unwrap(),
        None
    );
    // The first profile stops: its claims are free to take over.
    assert!(locks.release(&first_lease).await.unwrap());
    assert_eq!(
        h.store
            .claim_account(second, Some(HOST_ACCOUNT), &both)
            .await
            .unwrap(),
        None,
        "moving to the host's account gives up the owner's"
    );
    let third = ProfileId::new_random();
    let _third_lease = lease_of(third).await;
    assert_eq!(
        h.store
            .claim_account(third, Some(&owner), &both)
            .await
            .unwrap(),
        None,
        "the second profile's claims on the owner's account were given up"
    );
    // Paper gives up everything.
    assert_eq!(claim(second, None, &[]).await, None);
    assert_eq!(claim(third, Some(HOST_ACCOUNT), &["BTCUSDT"]).await, None);
}

async fn entry_is_refused_when_capital_is_insufficient(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let before = h.store.stats().snapshot().capital_check_refusals;
    let request = entry(&lease, profile, &s, 1, "1", "100.00000001");
    let error = tenant.write_ahead_entry(&request).await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Ledger(LedgerError::InsufficientCapital { .. })
        ),
        "{error:?}"
    );
    assert_eq!(
        h.store.stats().snapshot().capital_check_refusals,
        before + 1
    );
    assert!(
        tenant
            .order(&request.client_order_id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        tenant
            .capital(profile)
            .await
            .unwrap()
            .reserved_for_orders
            .get(),
        d("0")
    );
    let fits = entry(&lease, profile, &s, 2, "1", "100");
    tenant.write_ahead_entry(&fits).await.unwrap();
    assert_eq!(tenant.capital(profile).await.unwrap().free(), d("0"));
}

async fn bad_amounts_and_unknown_profiles_are_refused_with_typed_errors(h: &Harness) {
    assert!(decimal_from_f64("amount", f64::NAN).is_err());
    assert!(Amount::positive(d("0")).is_err());
    assert!(Amount::positive(d("-1")).is_err());
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "10").await;
    let tenant = h.store.tenant(user);
    let too_precise = tenant
        .allocate(profile, Amount::positive(d("0.000000001")).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(
        too_precise,
        StoreError::Ledger(LedgerError::TooPrecise { .. })
    ));
    let too_large = tenant
        .allocate(profile, Amount::positive(d("10000000000")).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(
        too_large,
        StoreError::Ledger(LedgerError::OutOfRange { .. })
    ));
    let unknown = ProfileId::new_random();
    let missing = tenant
        .allocate(unknown, Amount::positive(d("1")).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::UnknownProfile(p) if p == unknown));
    assert!(matches!(
        tenant.create_profile("").await,
        Err(StoreError::InvalidProfileName(..))
    ));
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let mut precise = entry(&lease, profile, &s, 1, "1", "1");
    precise.qty = Qty::new(d("0.000000001")).unwrap();
    assert!(matches!(
        tenant.write_ahead_entry(&precise).await,
        Err(StoreError::Ledger(LedgerError::TooPrecise { .. }))
    ));
    assert_eq!(
        tenant.capital(profile).await.unwrap().allocated.get(),
        d("10")
    );
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
}

async fn write_ahead_replay_is_a_noop_and_a_different_payload_is_refused(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("ETHUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 7, "2", "100");
    assert!(matches!(
        tenant.write_ahead_entry(&request).await.unwrap(),
        WriteAhead::Written(_)
    ));
    for _ in 0..3 {
        assert!(matches!(
            tenant.write_ahead_entry(&request).await.unwrap(),
            WriteAhead::Replayed(_)
        ));
    }
    let mut different = request.clone();
    different.price = Price::new(d("101")).unwrap();
    let error = tenant.write_ahead_entry(&different).await.unwrap_err();
    assert!(matches!(
        error,
        StoreError::Lifecycle(LifecycleError::ReplayMismatch(_))
    ));
    assert!(h.store.stats().snapshot().replay_mismatches >= 1);
    assert_eq!(
        tenant
            .capital(profile)
            .await
            .unwrap()
            .reserved_for_orders
            .get(),
        d("200")
    );
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
}

async fn entry_and_exit_lifecycle_moves_capital_and_writes_rows_only_on_fills(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "2", "100");
    let coid = request.client_order_id.clone();
    tenant.write_ahead_entry(&request).await.unwrap();
    assert!(
        tenant.position(profile, &s).await.unwrap().is_none(),
        "no lifecycle before a fill"
    );
    tenant.confirm_accepted(&coid, "8812").await.unwrap();
    tenant
        .record_fill(&fill(&coid, "t1", "0.5", "99", "0.01"))
        .await
        .unwrap();
    let position = tenant.position(profile, &s).await.unwrap().unwrap();
    assert_eq!(
        (position.qty_open, position.cost_open),
        (d("0.5"), d("49.5"))
    );
    tenant
        .record_fill(&fill(&coid, "t2", "1.5", "100", "0.03"))
        .await
        .unwrap();
    let order = tenant.order(&coid).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Filled);
    assert_eq!(order.reserved_remaining.get(), d("0"));
    let capital = tenant.capital(profile).await.unwrap();
    assert_eq!(
        capital,
        Capital {
            allocated: money("1000"),
            reserved_for_orders: money("0"),
            reserved_for_positions: money("199.5"),
            realized_pnl: money("-0.04"),
        }
    );
    let exit_request = exit(profile, &s, 2, "2", "110");
    let exit_coid = exit_request.client_order_id.clone();
    tenant.write_ahead_exit(&exit_request).await.unwrap();
    let outcome = tenant
        .record_fill(&fill(&exit_coid, "t3", "2", "110", "0.05"))
        .await
        .unwrap();
    assert!(
        matches!(outcome, FillOutcome::Recorded { realized_pnl, .. } if realized_pnl == d("20.5"))
    );
    assert!(
        tenant.position(profile, &s).await.unwrap().is_none(),
        "position closed"
    );
    let capital = tenant.capital(profile).await.unwrap();
    assert_eq!(capital.reserved_for_positions.get(), d("0"));
    assert_eq!(capital.realized_pnl.get(), d("20.41"));
    assert!(capital.holds_invariant());
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
    // The symbol is free again for a new entry.
    tenant
        .write_ahead_entry(&entry(&lease, profile, &s, 3, "1", "100"))
        .await
        .unwrap();
}

async fn fill_replay_changes_nothing_and_a_different_fill_under_its_trade_id_is_refused(
    h: &Harness,
) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "3", "100");
    tenant.write_ahead_entry(&request).await.unwrap();
    let first = fill(&request.client_order_id, "t1", "1", "100", "0.1");
    tenant.record_fill(&first).await.unwrap();
    let after_first = tenant.capital(profile).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            tenant.record_fill(&first).await.unwrap(),
            FillOutcome::Duplicate
        );
    }
    let forged = fill(&request.client_order_id, "t1", "2", "100", "0.1");
    assert!(matches!(
        tenant.record_fill(&forged).await,
        Err(StoreError::Lifecycle(LifecycleError::FillReplayMismatch(_)))
    ));
    assert_eq!(tenant.capital(profile).await.unwrap(), after_first);
    let order = tenant
        .order(&request.client_order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order.filled_qty.get(), d("1"));
    assert_eq!(order.status, OrderStatus::PartiallyFilled);
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
}

async fn cancel_releases_the_reservation_exactly_once(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "4", "100");
    let coid = request.client_order_id.clone();
    tenant.write_ahead_entry(&request).await.unwrap();
    tenant.confirm_accepted(&coid, "1").await.unwrap();
    tenant
        .record_fill(&fill(&coid, "t1", "1", "100", "0"))
        .await
        .unwrap();
    let changed = tenant
        .release_order(&coid, OrderStatus::Canceled)
        .await
        .unwrap();
    assert!(matches!(changed, StatusOutcome::Changed(_)));
    for _ in 0..3 {
        let again = tenant
            .release_order(&coid, OrderStatus::Canceled)
            .await
            .unwrap();
        assert!(matches!(again, StatusOutcome::Unchanged(_)));
    }
    let capital = tenant.capital(profile).await.unwrap();
    assert_eq!(capital.reserved_for_orders.get(), d("0"));
    assert_eq!(capital.reserved_for_positions.get(), d("100"));
    assert!(matches!(
        tenant.release_order(&coid, OrderStatus::New).await,
        Err(StoreError::Lifecycle(LifecycleError::NotAReleaseStatus(_)))
    ));
    assert!(matches!(
        tenant.release_order(&coid, OrderStatus::Rejected).await,
        Err(StoreError::Lifecycle(LifecycleError::InvalidTransition(_)))
    ));
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
}

async fn unknown_order_keeps_its_reservation_until_resolved(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "1", "100");
    let coid = request.client_order_id.clone();
    tenant.write_ahead_entry(&request).await.unwrap();
    tenant.mark_unknown(&coid).await.unwrap();
    let order = tenant.order(&coid).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Unknown);
    assert_eq!(
        tenant
            .capital(profile)
            .await
            .unwrap()
            .reserved_for_orders
            .get(),
        d("100")
    );
    tenant.confirm_accepted(&coid, "55").await.unwrap();
    // A late timeout after the answer changes nothing.
    let late = tenant.mark_unknown(&coid).await.unwrap();
    assert!(matches!(late, StatusOutcome::Unchanged(o) if o.status == OrderStatus::New));
    tenant
        .release_order(&coid, OrderStatus::Expired)
        .await
        .unwrap();
    assert_eq!(tenant.capital(profile).await.unwrap().free(), d("1000"));
}

async fn second_entry_for_a_symbol_is_refused_while_one_is_in_flight(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    tenant
        .write_ahead_entry(&entry(&lease, profile, &s, 1, "1", "100"))
        .await
        .unwrap();
    let second = tenant
        .write_ahead_entry(&entry(&lease, profile, &s, 2, "1", "100"))
        .await
        .unwrap_err();
    assert!(matches!(
        second,
        StoreError::Lifecycle(LifecycleError::EntryInFlight { .. })
    ));
    assert_eq!(
        tenant
            .capital(profile)
            .await
            .unwrap()
            .reserved_for_orders
            .get(),
        d("100")
    );
}

async fn write_with_a_stale_fence_is_refused_by_the_kernel_and_by_the_database(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let old = entry_lock(&h.store, profile, &s).await;
    assert!(h.store.locks().release(&old).await.unwrap());
    let new = entry_lock(&h.store, profile, &s).await;
    assert!(new.fence > old.fence);
    let tenant = h.store.tenant(user);
    let stale = entry(&old, profile, &s, 1, "1", "100");
    let error = tenant.write_ahead_entry(&stale).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Lock(LockError::StaleFence { current: Some(c), .. }) if c == new.fence),
        "{error:?}"
    );
    assert!(h.store.stats().snapshot().stale_fence_rejections >= 1);
    assert!(
        tenant
            .order(&stale.client_order_id)
            .await
            .unwrap()
            .is_none()
    );
    // The database refuses it too, when the kernel's check is bypassed.
    let raw = format!(
        "INSERT INTO orders (client_order_id, user_id, profile_id, symbol, kind, side, qty, price, \
         reserved, reserved_remaining, status, lock_key, fence) SELECT 'raw-stale', user_id, \
         profile_id, 'BTCUSDT', 'ENTRY', 'BUY', 1, 1, 0, 0, 'PENDING_SUBMIT', '{}', {} \
         FROM profiles WHERE profile_id = {}",
        old.key,
        old.fence.0,
        profile_literal(h, profile)
    );
    let planted = RowWrite::Order(OrderRecord {
        client_order_id: ClientOrderId::new("raw-stale").unwrap(),
        user,
        profile,
        symbol: s.clone(),
        kind: IntentKind::Entry,
        side: Side::Buy,
        qty: money("1"),
        price: money("1"),
        reserved: money("0"),
        reserved_remaining: money("0"),
        filled_qty: money("0"),
        status: OrderStatus::PendingSubmit,
        lock: Some(old.fenced()),
        exchange_order_id: None,
    });
    let refused = h.write_outside(user, &raw, planted).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Constraint(Constraint::CurrentFence)),
        "{refused:?}"
    );
    tenant
        .write_ahead_entry(&entry(&new, profile, &s, 1, "1", "100"))
        .await
        .unwrap();
}

/// A profile id as an SQL literal of the backend.
fn profile_literal(h: &Harness, profile: ProfileId) -> String {
    match h.store.backend() {
        keel_kernel::store::Backend::Postgres => format!("'{profile}'::uuid"),
        // The memory store takes the same writes as rows, not as SQL.
        keel_kernel::store::Backend::Sqlite | keel_kernel::store::Backend::Memory => {
            format!("X'{}'", profile.as_uuid().simple())
        }
    }
}

async fn lease_contention_renewal_release_and_fences_that_only_grow(h: &Harness) {
    let locks = h.store.locks();
    let key = LockKey::reconciliation(ProfileId::new_random());
    let (a, b) = (OwnerToken::new_random(), OwnerToken::new_random());
    let before = h.store.stats().snapshot();
    let lease = locks
        .acquire(LockKind::Reconciliation, &key, a, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(
        locks
            .acquire(LockKind::Reconciliation, &key, b, 60_000)
            .await
            .unwrap()
            .is_none()
    );
    let renewed = locks.renew(&lease, 90_000).await.unwrap();
    assert!(renewed.expires_at_ms >= lease.expires_at_ms);
    assert!(locks.release(&renewed).await.unwrap());
    assert!(
        !locks.release(&renewed).await.unwrap(),
        "a second release finds nothing"
    );
    let taken = locks
        .acquire(LockKind::Reconciliation, &key, b, 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(taken.fence > lease.fence);
    assert!(matches!(
        locks.renew(&lease, 60_000).await,
        Err(StoreError::Lock(LockError::Lost { .. }))
    ));
    assert!(matches!(
        locks.acquire(LockKind::ProfileLease, &key, a, 0).await,
        Err(StoreError::Lock(LockError::TtlOutOfRange { .. }))
    ));
    let after = h.store.stats().snapshot();
    assert_eq!(after.lock_acquired[1], before.lock_acquired[1] + 2);
    assert_eq!(after.lock_contended[1], before.lock_contended[1] + 1);
    assert_eq!(after.lock_lost[1], before.lock_lost[1] + 1);
    assert_eq!(
        after.lock_latency_count[1],
        before.lock_latency_count[1] + 3
    );
    assert_eq!(
        after.lock_ttl_expiries, before.lock_ttl_expiries,
        "a lease released, then taken, did not expire"
    );
}

async fn lease_expires_by_the_database_clock(h: &Harness) {
    let locks = h.store.locks();
    let key = LockKey::profile(ProfileId::new_random());
    let a = OwnerToken::new_random();
    let before = h.store.stats().snapshot();
    let first = locks
        .acquire(LockKind::ProfileLease, &key, a, 50)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let second = locks
        .acquire(
            LockKind::ProfileLease,
            &key,
            OwnerToken::new_random(),
            60_000,
        )
        .await
        .unwrap()
        .expect("an expired lease is free");
    assert!(second.fence > first.fence);
    let after = h.store.stats().snapshot();
    assert_eq!(
        after.lock_ttl_expiries[2],
        before.lock_ttl_expiries[2] + 1,
        "taking over the expired lease is one TTL expiry"
    );
    assert!(matches!(
        locks.renew(&first, 60_000).await,
        Err(StoreError::Lock(LockError::Lost { .. }))
    ));
}

async fn a_lease_taken_in_a_transaction_exists_only_if_it_commits(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let symbol = sym("BTCUSDT");
    let key = LockKey::entry(profile, &symbol);
    let (a, b) = (OwnerToken::new_random(), OwnerToken::new_random());
    let tenant = h.store.tenant(user);
    let before = h.store.stats().snapshot();

    // Refused write-ahead (too little capital): the transaction is dropped, and with it the grant.
    let mut tx = tenant.begin().await.unwrap();
    let rolled_back = tx
        .acquire_lock(LockKind::Entry, &key, a, TEST_LOCK_TTL_MS)
        .await
        .unwrap()
        .expect("the entry lock is free");
    let refused = tx
        .write_ahead_entry(&entry(&rolled_back, profile, &symbol, 1, "100", "100"))
        .await;
    assert!(matches!(
        refused,
        Err(StoreError::Ledger(LedgerError::InsufficientCapital { .. }))
    ));
    drop(tx);
    assert!(
        !h.store.locks().release(&rolled_back).await.unwrap(),
        "a lease rolled back with its transaction leaves no lock to release"
    );

    // Granted and written in one transaction: both are there after the one commit.
    let mut tx = tenant.begin().await.unwrap();
    let lease = tx
        .acquire_lock(LockKind::Entry, &key, b, TEST_LOCK_TTL_MS)
        .await
        .unwrap()
        .expect("the rolled-back lease left the lock free");
    let request = entry(&lease, profile, &symbol, 2, "1", "100");
    assert!(matches!(
        tx.write_ahead_entry(&request).await.unwrap(),
        WriteAhead::Written(_)
    ));
    tx.commit().await.unwrap();
    let written = tenant.order(&request.client_order_id).await.unwrap();
    assert_eq!(written.and_then(|o| o.lock), Some(lease.fenced()));
    assert!(
        h.store
            .locks()
            .acquire(LockKind::Entry, &key, a, TEST_LOCK_TTL_MS)
            .await
            .unwrap()
            .is_none(),
        "the committed lease is live"
    );
    let mut tx = tenant.begin().await.unwrap();
    assert!(
        tx.acquire_lock(LockKind::Entry, &key, a, TEST_LOCK_TTL_MS)
            .await
            .unwrap()
            .is_none(),
        "inside a transaction too"
    );
    drop(tx);
    assert!(h.store.locks().release(&lease).await.unwrap());

    let after = h.store.stats().snapshot();
    assert_eq!(after.lock_acquired[0], before.lock_acquired[0] + 2);
    assert_eq!(after.lock_contended[0], before.lock_contended[0] + 2);
    assert_eq!(
        after.lock_latency_count[0],
        before.lock_latency_count[0] + 4
    );
}

async fn live_leases_are_counted_by_key_prefix(h: &Harness) {
    let locks = h.store.locks();
    let prefix = LockKey::INSTANCE_PREFIX;
    let before = locks.live(LockKind::ProfileLease, prefix).await.unwrap();
    let (a, b) = (OwnerToken::new_random(), OwnerToken::new_random());
    let kept = locks
        .acquire(LockKind::ProfileLease, &LockKey::instance(a), a, 60_000)
        .await
        .unwrap()
        .unwrap();
    // Live for a minute, however slow the machine: it is made to expire below, by the database
    // clock, rather than waited out.
    locks
        .acquire(LockKind::ProfileLease, &LockKey::instance(b), b, 60_000)
        .await
        .unwrap()
        .unwrap();
    // Another key in the same table is not an instance.
    locks
        .acquire(
            LockKind::ProfileLease,
            &LockKey::profile(ProfileId::new_random()),
            a,
            60_000,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        locks.live(LockKind::ProfileLease, prefix).await.unwrap(),
        before + 2
    );
    let expire = format!(
        "UPDATE profile_leases SET expires_at_ms = expires_at_ms - 120000 WHERE lock_key = '{}'",
        LockKey::instance(b).as_str()
    );
    let planted = RowWrite::ExpireLock {
        kind: LockKind::ProfileLease,
        key: LockKey::instance(b).as_str().to_owned(),
        earlier_ms: 120_000,
    };
    assert_eq!(
        h.write_outside(UserId::new_random(), &expire, planted)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        locks.live(LockKind::ProfileLease, prefix).await.unwrap(),
        before + 1,
        "an expired lease is not live"
    );
    assert!(locks.release(&kept).await.unwrap());
    assert_eq!(
        locks.live(LockKind::ProfileLease, prefix).await.unwrap(),
        before
    );
}

async fn database_check_refuses_a_capital_row_that_breaks_the_invariant(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100").await;
    let sql = format!(
        "UPDATE capital_accounts SET reserved_for_orders = allocated + 1 WHERE profile_id = {}",
        profile_literal(h, profile)
    );
    let capital = Capital {
        allocated: money("100"),
        reserved_for_orders: money("101"),
        ..Capital::default()
    };
    let planted = RowWrite::Capital { profile, capital };
    let refused = h.write_outside(user, &sql, planted).await.unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Constraint(Constraint::CapitalInvariant)
        ),
        "{refused:?}"
    );
    assert_eq!(
        h.store.tenant(user).capital(profile).await.unwrap().free(),
        d("100")
    );
}

/// A money value as an SQL literal of the backend: a decimal on PostgreSQL, units of 10^-8 on
/// SQLite.
fn money_literal(h: &Harness, text: &str) -> String {
    match h.store.backend() {
        Backend::Postgres => text.to_owned(),
        Backend::Sqlite | Backend::Memory => (d(text) * d("100000000")).to_string(),
    }
}

/// The store error of reading a stored value back, when it names `column`.
fn corrupt_column(error: &StoreError, column: &str) -> bool {
    matches!(error, StoreError::Corrupt(what) if what.starts_with(&format!("{column}: ")))
}

async fn rows_the_money_types_refuse_are_a_typed_error_when_read(h: &Harness) {
    if h.store.backend() == Backend::Memory {
        // The memory store keeps its rows as the checked types: no such row can exist there.
        return;
    }
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "2", "100");
    let coid = request.client_order_id.clone();
    tenant.write_ahead_entry(&request).await.unwrap();
    let lit = profile_literal(h, profile);
    // Beyond CAPITAL_MAX, within what both databases hold (NUMERIC(30, 8), 64-bit units), and
    // within every CHECK constraint of the two tables.
    let beyond = money_literal(h, "20000000000");
    let sql = format!(
        "UPDATE orders SET reserved = {beyond}, reserved_remaining = {beyond} \
         WHERE profile_id = {lit}"
    );
    assert_eq!(h.raw(user, &sql).await.unwrap(), 1);
    let refused = tenant.order(&coid).await.unwrap_err();
    assert!(corrupt_column(&refused, "reserved"), "{refused:?}");
    let refused = tenant
        .record_fill(&fill(&coid, "t1", "1", "100", "0"))
        .await
        .unwrap_err();
    assert!(corrupt_column(&refused, "reserved"), "{refused:?}");
    let sql = format!("UPDATE capital_accounts SET allocated = {beyond} WHERE profile_id = {lit}");
    assert_eq!(h.raw(user, &sql).await.unwrap(), 1);
    let refused = tenant.capital(profile).await.unwrap_err();
    assert!(corrupt_column(&refused, "allocated"), "{refused:?}");
    let refused = tenant.rebuild_capital(profile, true).await.unwrap_err();
    assert!(corrupt_column(&refused, "allocated"), "{refused:?}");
    if h.store.backend() == Backend::Sqlite {
        // A negative filled quantity, which only a database whose CHECK constraints were
        // switched off for the write can hold.
        let sql = format!(
            "PRAGMA ignore_check_constraints = ON; \
             UPDATE orders SET reserved = 0, reserved_remaining = 0, filled_qty = -100000000 \
             WHERE profile_id = {lit}; PRAGMA ignore_check_constraints = OFF"
        );
        // One statement string, so that the pragma holds on the connection that writes; the
        // count of rows it reports depends on the driver, the read below shows the write.
        h.raw(user, &sql).await.unwrap();
        let refused = tenant.order(&coid).await.unwrap_err();
        assert!(corrupt_column(&refused, "filled_qty"), "{refused:?}");
    }
}

async fn journal_refuses_update_and_delete(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100").await;
    let lit = profile_literal(h, profile);
    for (sql, planted) in [
        (
            format!("UPDATE ledger_entries SET d_allocated = 5 WHERE profile_id = {lit}"),
            RowWrite::UpdateJournal { profile },
        ),
        (
            format!("DELETE FROM ledger_entries WHERE profile_id = {lit}"),
            RowWrite::DeleteJournal { profile },
        ),
    ] {
        let refused = h.write_outside(user, &sql, planted).await.unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Constraint(Constraint::LedgerAppendOnly)
            ),
            "{sql}: {refused:?}"
        );
    }
}

async fn rebuild_reports_and_repairs_a_tampered_capital_row(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100").await;
    let sql = format!(
        "UPDATE capital_accounts SET allocated = allocated + allocated WHERE profile_id = {}",
        profile_literal(h, profile)
    );
    let tenant = h.store.tenant(user);
    let mut capital = tenant.capital(profile).await.unwrap();
    capital.allocated = money("200");
    let planted = RowWrite::Capital { profile, capital };
    assert_eq!(h.write_outside(user, &sql, planted).await.unwrap(), 1);
    let differences = h.store.stats().snapshot().ledger_rebuild_differences;
    let report = tenant.rebuild_capital(profile, true).await.unwrap();
    assert!(report.differs() && report.repaired);
    assert_eq!(report.stored.allocated.get(), d("200"));
    assert_eq!(report.journal.allocated.get(), d("100"));
    assert_eq!(
        h.store.stats().snapshot().ledger_rebuild_differences,
        differences + 1
    );
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
    assert_eq!(
        tenant.capital(profile).await.unwrap().allocated.get(),
        d("100")
    );
}

async fn unique_keys_refuse_duplicate_rows_in_the_database(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let tenant = h.store.tenant(user);
    let request = entry(&lease, profile, &s, 1, "2", "100");
    let coid = request.client_order_id.clone();
    tenant.write_ahead_entry(&request).await.unwrap();
    tenant
        .record_fill(&fill(&coid, "t1", "1", "100", "0"))
        .await
        .unwrap();
    let order_columns = "user_id, profile_id, symbol, kind, side, qty, price, reserved, \
                         reserved_remaining, status, lock_key, fence";
    // A closed copy, so that only the client order id collides.
    let closed_columns =
        "user_id, profile_id, symbol, kind, side, qty, price, reserved, reserved_remaining, status";
    let closed_select = "user_id, profile_id, symbol, kind, side, qty, price, reserved, reserved_remaining, 'CANCELED'";
    let order = tenant.order(&coid).await.unwrap().unwrap();
    let closed_copy = OrderRecord {
        status: OrderStatus::Canceled,
        lock: None,
        filled_qty: money("0"),
        exchange_order_id: None,
        ..order.clone()
    };
    let open_copy = OrderRecord {
        client_order_id: ClientOrderId::new("second-entry").unwrap(),
        ..order.clone()
    };
    let reserve = CapitalDelta {
        reserved_for_orders: order.reserved.get(),
        ..CapitalDelta::default()
    };
    let cases = [
        (
            format!(
                "INSERT INTO fills (user_id, profile_id, symbol, client_order_id, exchange_trade_id, \
                 qty, price, fee, executed_at_ms) SELECT user_id, profile_id, symbol, client_order_id, \
                 exchange_trade_id, qty, price, fee, executed_at_ms FROM fills WHERE client_order_id = '{coid}'"
            ),
            RowWrite::Fill {
                order: coid.clone(),
                trade_id: "t1".to_owned(),
                qty: d("1"),
                price: d("100"),
                fee: d("0"),
            },
            Constraint::ExchangeTradeKey,
        ),
        (
            format!(
                "INSERT INTO orders (client_order_id, {closed_columns}) SELECT client_order_id, \
                 {closed_select} FROM orders WHERE client_order_id = '{coid}'"
            ),
            RowWrite::Order(closed_copy),
            Constraint::ClientOrderIdKey,
        ),
        (
            format!(
                "INSERT INTO orders (client_order_id, {order_columns}) SELECT 'second-entry', \
                 {order_columns} FROM orders WHERE client_order_id = '{coid}'"
            ),
            RowWrite::Order(open_copy),
            Constraint::OneOpenEntryOrder,
        ),
        (
            format!(
                "INSERT INTO ledger_entries (user_id, profile_id, client_order_id, entry_kind, \
                 d_reserved_for_orders, dedup_key) SELECT user_id, profile_id, client_order_id, \
                 entry_kind, d_reserved_for_orders, dedup_key FROM ledger_entries \
                 WHERE client_order_id = '{coid}' AND entry_kind = 'ENTRY_RESERVE'"
            ),
            RowWrite::Journal {
                profile,
                order: Some(coid.clone()),
                kind: JournalKind::EntryReserve,
                delta: reserve,
                dedup_key: format!("reserve:{coid}"),
            },
            Constraint::LedgerDedupKey,
        ),
    ];
    for (sql, planted, expected) in cases {
        let refused = h.write_outside(user, &sql, planted).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Constraint(c) if *c == expected),
            "{sql}: {refused:?}"
        );
    }
    // A second open ENTRY lifecycle for the symbol, under an order that has none yet.
    let exit_request = exit(profile, &s, 2, "1", "100");
    tenant.write_ahead_exit(&exit_request).await.unwrap();
    let lifecycle = format!(
        "INSERT INTO lifecycles (user_id, profile_id, symbol, kind, side, client_order_id, qty, \
         cost, qty_open, cost_open, is_open) SELECT user_id, profile_id, symbol, kind, side, \
         '{}', qty, cost, qty_open, cost_open, is_open FROM lifecycles WHERE client_order_id = '{coid}'",
        exit_request.client_order_id
    );
    let planted = RowWrite::OpenEntryLifecycle {
        order: exit_request.client_order_id.clone(),
        qty: d("1"),
        cost: d("100"),
    };
    let refused = h
        .write_outside(user, &lifecycle, planted)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Constraint(Constraint::OneOpenEntryLifecycle)
        ),
        "{refused:?}"
    );
}

async fn another_tenant_cannot_see_or_touch_a_profile_or_its_orders(h: &Harness) {
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let profile = funded_profile(&h.store, alice, "1000").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let request = entry(&lease, profile, &s, 1, "1", "100");
    let coid = request.client_order_id.clone();
    h.store
        .tenant(alice)
        .write_ahead_entry(&request)
        .await
        .unwrap();
    let bob_scope = h.store.tenant(bob);
    assert!(matches!(
        bob_scope.capital(profile).await,
        Err(StoreError::UnknownProfile(_))
    ));
    assert!(matches!(
        bob_scope
            .allocate(profile, Amount::positive(d("1")).unwrap())
            .await,
        Err(StoreError::UnknownProfile(_))
    ));
    assert!(bob_scope.order(&coid).await.unwrap().is_none());
    assert!(matches!(
        bob_scope
            .record_fill(&fill(&coid, "t1", "1", "100", "0"))
            .await,
        Err(StoreError::Lifecycle(LifecycleError::UnknownOrder(_)))
    ));
    assert!(matches!(
        bob_scope.release_order(&coid, OrderStatus::Canceled).await,
        Err(StoreError::Lifecycle(LifecycleError::UnknownOrder(_)))
    ));
    // Bob's own profile cannot reuse Alice's client order id.
    let bobs = funded_profile(&h.store, bob, "1000").await;
    let bob_lease = entry_lock(&h.store, bobs, &s).await;
    let mut stolen = entry(&bob_lease, bobs, &s, 1, "1", "100");
    stolen.client_order_id = coid.clone();
    assert!(matches!(
        bob_scope.write_ahead_entry(&stolen).await,
        Err(StoreError::Lifecycle(LifecycleError::ClientOrderIdTaken(_)))
    ));
    let alice_order = h.store.tenant(alice).order(&coid).await.unwrap().unwrap();
    assert_eq!(alice_order.status, OrderStatus::PendingSubmit);
    assert_eq!(bob_scope.capital(bobs).await.unwrap().free(), d("1000"));
    let _ = ClientOrderId::derive(profile, &s, 1, IntentKind::Entry);
}

async fn exits_beyond_the_position_are_refused(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let s = sym("BTCUSDT");
    let tenant = h.store.tenant(user);
    assert!(matches!(
        tenant
            .write_ahead_exit(&exit(profile, &s, 1, "1", "100"))
            .await,
        Err(StoreError::Lifecycle(LifecycleError::NoOpenPosition { .. }))
    ));
    let lease = entry_lock(&h.store, profile, &s).await;
    let request = entry(&lease, profile, &s, 1, "2", "100");
    tenant.write_ahead_entry(&request).await.unwrap();
    tenant
        .record_fill(&fill(&request.client_order_id, "t1", "2", "100", "0"))
        .await
        .unwrap();
    tenant
        .write_ahead_exit(&exit(profile, &s, 2, "1.5", "100"))
        .await
        .unwrap();
    assert!(matches!(
        tenant
            .write_ahead_exit(&exit(profile, &s, 3, "1", "100"))
            .await,
        Err(StoreError::Lifecycle(
            LifecycleError::ExitExceedsPosition { .. }
        ))
    ));
    let overfill = fill(&request.client_order_id, "t9", "1", "100", "0");
    assert!(matches!(
        tenant.record_fill(&overfill).await,
        Err(StoreError::Lifecycle(LifecycleError::Overfill { .. }))
    ));
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
}

async fn a_write_under_a_profile_lease_taken_over_is_refused_in_its_own_transaction(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100").await;
    let locks = h.store.locks();
    let key = LockKey::profile(profile);
    let first = locks
        .acquire(
            LockKind::ProfileLease,
            &key,
            OwnerToken::new_random(),
            60_000,
        )
        .await
        .unwrap()
        .unwrap();
    let stale = h.store.guarded_by(LeaseGuard::of(profile, &first));
    let one = Amount::positive(d("1")).unwrap();
    stale.tenant(user).allocate(profile, one).await.unwrap();
    // The lease moves to another instance (released here; an expiry behaves alike).
    assert!(locks.release(&first).await.unwrap());
    let second = locks
        .acquire(
            LockKind::ProfileLease,
            &key,
            OwnerToken::new_random(),
            60_000,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(second.fence > first.fence);
    let refused = stale.tenant(user).allocate(profile, one).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Constraint(Constraint::StaleProfileLease))
        ),
        "{refused:?}"
    );
    let current = h.store.guarded_by(LeaseGuard::of(profile, &second));
    let capital = current.tenant(user).allocate(profile, one).await.unwrap();
    assert_eq!(
        capital.allocated.get(),
        d("102"),
        "the refused write left nothing"
    );
    // Without any lease row at all, a guarded write is refused too.
    assert!(locks.release(&second).await.unwrap());
    assert!(matches!(
        current.tenant(user).capital(profile).await,
        Err(StoreError::Constraint(Constraint::StaleProfileLease))
    ));
}

async fn the_directory_lists_every_tenants_profiles(h: &Harness) {
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let a = funded_profile(&h.store, alice, "1").await;
    let b = funded_profile(&h.store, bob, "1").await;
    let listed = h.store.profile_directory().await.unwrap();
    for (profile, user) in [(a, alice), (b, bob)] {
        assert!(
            listed.contains(&DirectoryEntry { profile, user }),
            "{profile} of {user} missing from {listed:?}"
        );
    }
}

async fn a_quarantine_is_stored_asked_to_end_and_kept_as_history(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let tenant = h.store.tenant(user);
    let evidence = [QuarantineEvidence::new(
        "missing_in_db",
        "E-unwritten",
        "no such order",
        "open, NEW, filled 0 of 1",
    )];
    let mut tx = tenant.begin().await.unwrap();
    assert_eq!(tx.quarantine(profile).await.unwrap(), None);
    assert_eq!(
        tx.request_quarantine_clear(profile, user).await.unwrap(),
        None,
        "nothing to ask for on a profile that is not quarantined"
    );
    let stored = tx
        .enter_quarantine(profile, "missing_in_db x1", &evidence, 1_000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored.reason, "missing_in_db x1");
    assert_eq!(stored.since_ms, 1_000);
    assert_eq!(stored.evidence, evidence);
    assert_eq!(stored.clear_requested_by, None);

    let mut tx = tenant.begin().await.unwrap();
    // Nobody asked: a clean pass ends nothing.
    assert_eq!(tx.clear_quarantine(profile).await.unwrap(), None);
    assert!(tx.quarantine(profile).await.unwrap().is_some());
    // Asked, then drift found again: the row is renewed (since kept) and the request spent.
    let operator = UserId::new_random();
    let asked = tx
        .request_quarantine_clear(profile, operator)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked.clear_requested_by, Some(operator));
    assert!(asked.clear_requested_at_ms.is_some_and(|at| at > 0));
    let renewed = tx
        .enter_quarantine(profile, "position_mismatch x1", &[], 2_000)
        .await
        .unwrap();
    assert_eq!(renewed.since_ms, 1_000);
    assert_eq!(renewed.reason, "position_mismatch x1");
    assert!(renewed.evidence.is_empty());
    assert_eq!(renewed.clear_requested_by, None);
    // Asked again, and a clean pass ends it: kept, closed, naming who asked.
    tx.request_quarantine_clear(profile, user).await.unwrap();
    let closed = tx.clear_quarantine(profile).await.unwrap().unwrap();
    assert_eq!(closed.cleared_by, Some(user));
    assert!(closed.cleared_at_ms.is_some());
    assert_eq!(tx.quarantine(profile).await.unwrap(), None);
    // A later quarantine is a new row; the closed one stays as history.
    let again = tx
        .enter_quarantine(profile, "missing_on_exchange x1", &[], 3_000)
        .await
        .unwrap();
    assert_eq!(again.since_ms, 3_000);
    assert_eq!(tx.quarantine_history(profile).await.unwrap(), vec![closed]);
    tx.commit().await.unwrap();

    // Another tenant neither sees it nor asks for its end.
    let other = UserId::new_random();
    let mut tx = h.store.tenant(other).begin().await.unwrap();
    assert_eq!(tx.quarantine(profile).await.unwrap(), None);
    assert_eq!(
        tx.request_quarantine_clear(profile, other).await.unwrap(),
        None
    );
    assert!(tx.quarantine_history(profile).await.unwrap().is_empty());
    tx.commit().await.unwrap();
    let mut tx = tenant.begin().await.unwrap();
    let open = tx.quarantine(profile).await.unwrap().unwrap();
    assert_eq!(
        open.clear_requested_by, None,
        "another tenant asked nothing"
    );

    // The kernel's bounds: a reason too long is refused; evidence is cut to its bound.
    let refused = tx
        .enter_quarantine(
            profile,
            &"x".repeat(QUARANTINE_REASON_LEN_MAX + 1),
            &[],
            4_000,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::InvalidQuarantine(_)),
        "{refused:?}"
    );
    drop(tx);
    let many: Vec<QuarantineEvidence> = (0..100)
        .map(|i| QuarantineEvidence::new("missing_in_db", &format!("E-{i}"), &"s".repeat(500), "x"))
        .collect();
    let mut tx = tenant.begin().await.unwrap();
    let bounded = tx
        .enter_quarantine(profile, "missing_in_db x100", &many, 5_000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(bounded.evidence.len(), QUARANTINE_EVIDENCE_ITEMS_MAX);
    assert_eq!(
        bounded.evidence[0].store.chars().count(),
        QUARANTINE_EVIDENCE_TEXT_LEN_MAX
    );
}

async fn a_second_open_quarantine_is_refused_by_the_database(h: &Harness) {
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "1000").await;
    let mut tx = h.store.tenant(user).begin().await.unwrap();
    tx.enter_quarantine(profile, "position_mismatch x1", &[], 1_000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let copy = "INSERT INTO profile_quarantines (profile_id, user_id, reason, evidence, since_ms) \
                SELECT profile_id, user_id, reason, evidence, since_ms FROM profile_quarantines";
    let refused = h
        .write_outside(user, copy, RowWrite::OpenQuarantine { profile })
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Constraint(Constraint::OneOpenQuarantine)
        ),
        "{refused:?}"
    );
}
