//! Races on PostgreSQL: many tasks on one capital row, and owners racing for one lock.

use std::sync::Arc;
use std::time::Duration;

use keel_kernel::ids::UserId;
use keel_kernel::ledger::LedgerError;
use keel_kernel::lock::{LockError, LockKey, LockKind, OwnerToken};
use keel_kernel::money::Amount;
use keel_kernel::store::StoreError;
use tokio::sync::Barrier;

use crate::fixtures::*;
use crate::support::PgTestDb;

/// Tasks racing in each test: more than the pool's connections would serialize them anyway.
const RACERS: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_allocations_and_reservations_never_lose_an_update_or_over_reserve() {
    let db = PgTestDb::create().await;
    let store = db.store.clone();
    let user = UserId::new_random();
    let profile = store.tenant(user).create_profile("race").await.unwrap();
    budgeted(&store, user).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let allocations = (0..RACERS).map(|_| {
        let (store, barrier) = (store.clone(), Arc::clone(&barrier));
        tokio::spawn(async move {
            barrier.wait().await;
            let amount = Amount::positive(d("25")).unwrap();
            store.tenant(user).allocate(profile, amount).await.unwrap();
        })
    });
    for task in allocations.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    let tenant = store.tenant(user);
    assert_eq!(
        tenant.capital(profile).await.unwrap().allocated.get(),
        d("600"),
        "no allocation lost"
    );
    // 600 of capital, 24 entries of 100 each: exactly 6 fit.
    let reservations = (0..RACERS).map(|i| {
        let (store, barrier) = (store.clone(), Arc::clone(&barrier));
        tokio::spawn(async move {
            let s = sym(&format!("S{i}"));
            let lease = entry_lock(&store, profile, &s).await;
            barrier.wait().await;
            let request = entry(&lease, profile, &s, 1, "1", "100");
            store.tenant(user).write_ahead_entry(&request).await
        })
    });
    let mut written = 0;
    for task in reservations.collect::<Vec<_>>() {
        match task.await.unwrap() {
            Ok(_) => written += 1,
            Err(StoreError::Ledger(LedgerError::InsufficientCapital { .. })) => {}
            Err(other) => panic!("unexpected error in the race: {other:?}"),
        }
    }
    assert_eq!(written, 6);
    let capital = tenant.capital(profile).await.unwrap();
    assert_eq!(capital.reserved_for_orders.get(), d("600"));
    assert!(capital.holds_invariant());
    assert!(
        !tenant
            .rebuild_capital(profile, false)
            .await
            .unwrap()
            .differs()
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_racing_one_lock_exactly_one_wins_and_fences_strictly_increase() {
    const ROUNDS: usize = 25;
    let db = PgTestDb::create().await;
    let store = db.store.clone();
    let key = LockKey::new("race:one-lock").unwrap();
    let owners = [OwnerToken::new_random(), OwnerToken::new_random()];
    let mut last_fence = None;
    for _ in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(2));
        let tasks = owners.map(|owner| {
            let (store, key, barrier) = (store.clone(), key.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .locks()
                    .acquire(LockKind::Entry, &key, owner, 60_000)
                    .await
                    .unwrap()
            })
        });
        let mut winners = Vec::new();
        for task in tasks {
            winners.extend(task.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "exactly one owner wins a round");
        let lease = winners.pop().unwrap();
        assert!(Some(lease.fence) > last_fence, "fences strictly increase");
        last_fence = Some(lease.fence);
        assert!(store.locks().release(&lease).await.unwrap());
    }
    let stats = store.stats().snapshot();
    assert_eq!(stats.lock_acquired[0], ROUNDS as u64);
    assert_eq!(stats.lock_contended[0], ROUNDS as u64);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_expired_cannot_write() {
    let db = PgTestDb::create().await;
    let store = db.store.clone();
    let user = UserId::new_random();
    let profile = funded_profile(&store, user, "1000").await;
    let s = sym("BTCUSDT");
    let key = LockKey::entry(profile, &s);
    let stale = store
        .locks()
        .acquire(LockKind::Entry, &key, OwnerToken::new_random(), 100)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Expired but not yet taken over: the write is refused all the same.
    let request = entry(&stale, profile, &s, 1, "1", "100");
    let error = store
        .tenant(user)
        .write_ahead_entry(&request)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::Lock(LockError::StaleFence { current: None, .. })
    ));
    let fresh = entry_lock(&store, profile, &s).await;
    let error = store
        .tenant(user)
        .write_ahead_entry(&request)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Lock(LockError::StaleFence { current: Some(c), .. }) if c == fresh.fence)
    );
    store
        .tenant(user)
        .write_ahead_entry(&entry(&fresh, profile, &s, 1, "1", "100"))
        .await
        .unwrap();
    db.drop_db().await;
}
