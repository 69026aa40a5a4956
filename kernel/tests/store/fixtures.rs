//! Small builders shared by the store tests.

use std::str::FromStr;

use keel_kernel::ids::{ClientOrderId, IntentKind, ProfileId, Symbol, UserId};
use keel_kernel::ledger::CAPITAL_MAX;
use keel_kernel::lifecycle::{EntryRequest, ExitRequest, FillReport};
use keel_kernel::lock::{Lease, LockKey, LockKind, OwnerToken};
use keel_kernel::market::Side;
use keel_kernel::money::{Amount, Price, Qty};
use keel_kernel::store::{HOST_OPERATOR, Store};
use rust_decimal::Decimal;

/// TTL of the entry locks tests take: long enough never to expire during a test.
pub const TEST_LOCK_TTL_MS: i64 = 120_000;

/// A decimal from text.
pub fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// One of the checked money types of `keel_kernel::money`, from text.
pub fn money<T>(text: &str) -> T
where
    T: TryFrom<Decimal>,
    T::Error: std::fmt::Debug,
{
    T::try_from(d(text)).unwrap()
}

/// A symbol from text.
pub fn sym(text: &str) -> Symbol {
    Symbol::new(text).unwrap()
}

/// Grants `user` the largest budget there is, so that only the capital checks refuse their
/// allocations.
pub async fn budgeted(store: &Store, user: UserId) {
    let operator = store.operator(HOST_OPERATOR);
    let granted = operator.budget(user).await.unwrap().granted;
    if granted < CAPITAL_MAX {
        operator
            .grant_budget(user, CAPITAL_MAX - granted)
            .await
            .unwrap();
    }
}

/// A new profile of `user` with `allocated` capital (and the largest budget, see [`budgeted`]).
pub async fn funded_profile(store: &Store, user: UserId, allocated: &str) -> ProfileId {
    budgeted(store, user).await;
    let tenant = store.tenant(user);
    let profile = tenant.create_profile("test").await.unwrap();
    tenant
        .allocate(profile, Amount::positive(d(allocated)).unwrap())
        .await
        .unwrap();
    profile
}

/// Takes the entry lock of (profile, symbol) for a fresh owner.
pub async fn entry_lock(store: &Store, profile: ProfileId, symbol: &Symbol) -> Lease {
    store
        .locks()
        .acquire(
            LockKind::Entry,
            &LockKey::entry(profile, symbol),
            OwnerToken::new_random(),
            TEST_LOCK_TTL_MS,
        )
        .await
        .unwrap()
        .expect("the entry lock is free")
}

/// An ENTRY request of decision `seq`.
pub fn entry(
    lease: &Lease,
    profile: ProfileId,
    symbol: &Symbol,
    seq: u64,
    qty: &str,
    price: &str,
) -> EntryRequest {
    EntryRequest {
        profile,
        client_order_id: ClientOrderId::derive(profile, symbol, seq, IntentKind::Entry),
        symbol: symbol.clone(),
        side: Side::Buy,
        qty: Qty::new(d(qty)).unwrap(),
        price: Price::new(d(price)).unwrap(),
        lock: lease.fenced(),
    }
}

/// An EXIT request of decision `seq`.
pub fn exit(profile: ProfileId, symbol: &Symbol, seq: u64, qty: &str, price: &str) -> ExitRequest {
    ExitRequest {
        profile,
        client_order_id: ClientOrderId::derive(profile, symbol, seq, IntentKind::Exit),
        symbol: symbol.clone(),
        qty: Qty::new(d(qty)).unwrap(),
        price: Price::new(d(price)).unwrap(),
    }
}

/// A fill report.
pub fn fill(order: &ClientOrderId, trade: &str, qty: &str, price: &str, fee: &str) -> FillReport {
    FillReport {
        client_order_id: order.clone(),
        exchange_trade_id: trade.to_owned(),
        qty: Qty::new(d(qty)).unwrap(),
        price: Price::new(d(price)).unwrap(),
        fee: d(fee),
        executed_at_ms: 1_700_000_000_000,
    }
}
