//! The store's invariant counters as Prometheus exports them: each test makes the store refuse
//! a write and reads the exported family, so removing the export fails it.

use keel_kernel::ids::UserId;
use keel_kernel::ledger::LedgerError;
use keel_kernel::lifecycle::WriteAhead;
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use keel_kernel::plant::Plant;
use keel_kernel::store::{Constraint, HOST_OPERATOR, StoreError};

use crate::fixtures::*;
use crate::support::Harness;

keel_testkit::contract_tests!(
    capital_check_refusal_moves_the_exported_counter,
    capital_constraint_refusal_on_the_fill_path_moves_the_exported_counter,
    budget_check_refusal_moves_the_exported_counter,
);

/// The value of the unlabelled counter `name` in the text exposition of `metrics`.
fn exported(metrics: &Metrics, name: &str) -> u64 {
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} is not exported:\n{text}"));
    let value = line
        .split_whitespace()
        .nth(1)
        .expect("a sample has a value");
    value.parse().expect("a counter's value is a whole number")
}

async fn capital_check_refusal_moves_the_exported_counter(h: &Harness) {
    let metrics = Metrics::new();
    metrics.observe_store(&h.store);
    let user = UserId::new_random();
    let profile = funded_profile(&h.store, user, "100").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&h.store, profile, &s).await;
    let before = exported(&metrics, "keel_capital_check_refusals_total");
    let request = entry(&lease, profile, &s, 1, "1", "100.00000001");
    let error = h
        .store
        .tenant(user)
        .write_ahead_entry(&request)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Ledger(LedgerError::InsufficientCapital { .. })
        ),
        "{error:?}"
    );
    assert_eq!(
        exported(&metrics, "keel_capital_check_refusals_total"),
        before + 1
    );
    assert_eq!(
        exported(&metrics, "keel_capital_constraint_violations_total"),
        0
    );
}

/// With the kernel's capital check planted away, a fill whose fee takes free capital below
/// zero reaches the database, whose `capital_invariant` CHECK refuses it: the refusal is
/// counted as the capital invariant's, not only as a failed transaction.
async fn capital_constraint_refusal_on_the_fill_path_moves_the_exported_counter(h: &Harness) {
    let metrics = Metrics::new();
    metrics.observe_store(&h.store);
    let planted = h.store.clone().with_plant(Plant::LedgerCheckDisabled);
    let user = UserId::new_random();
    let profile = funded_profile(&planted, user, "100").await;
    let s = sym("BTCUSDT");
    let lease = entry_lock(&planted, profile, &s).await;
    let tenant = planted.tenant(user);
    let request = entry(&lease, profile, &s, 1, "1", "100");
    let written = tenant.write_ahead_entry(&request).await.unwrap();
    assert!(matches!(written, WriteAhead::Written(_)));
    let before = exported(&metrics, "keel_capital_constraint_violations_total");
    let costly = fill(&request.client_order_id, "t1", "1", "100", "1");
    let error = tenant.record_fill(&costly).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Constraint(Constraint::CapitalInvariant)),
        "{error:?}"
    );
    assert_eq!(
        exported(&metrics, "keel_capital_constraint_violations_total"),
        before + 1
    );
    let capital = tenant.capital(profile).await.unwrap();
    assert!(capital.holds_invariant(), "{capital}");
    assert_eq!(capital.realized_pnl.get(), d("0"));
}

/// An allocation beyond its owner's budget is refused by the kernel and counted; the database's
/// counter stays at zero (and is exported: its family is read).
async fn budget_check_refusal_moves_the_exported_counter(h: &Harness) {
    let metrics = Metrics::new();
    metrics.observe_store(&h.store);
    let user = UserId::new_random();
    let tenant = h.store.tenant(user);
    let profile = tenant.create_profile("budgeted").await.unwrap();
    h.store
        .operator(HOST_OPERATOR)
        .grant_budget(user, d("10"))
        .await
        .unwrap();
    let before = exported(&metrics, "keel_budget_check_refusals_total");
    let error = tenant
        .allocate(profile, Amount::positive(d("10.5")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Ledger(LedgerError::OverBudget { .. })),
        "{error:?}"
    );
    assert_eq!(
        exported(&metrics, "keel_budget_check_refusals_total"),
        before + 1
    );
    assert_eq!(
        exported(&metrics, "keel_budget_constraint_violations_total"),
        0
    );
}
