//! Restart durability and reconciliation against the exchange's truth.

use keel_exchange::codes;
use keel_kernel::engine::Clock;
use keel_kernel::engine::QuarantineRecord;
use keel_kernel::exchange::{Exchange, OrderRequest, OrderType, PlaceOutcome};
use keel_kernel::ids::{ClientOrderId, UserId};
use keel_kernel::market::Side;
use keel_kernel::money::Qty;
use keel_kernel::order::OrderStatus;
use rust_decimal_macros::dec;

use crate::harness::{Harness, Scripted, btc, candle};
use crate::path::buy;

#[tokio::test]
async fn restart_recovers_fills_made_while_down_and_decides_the_same_ids() {
    let strategy = Scripted::default().at(1, vec![buy(500.0)]);
    let mut h = Harness::new(strategy.clone()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let sent = h.step(&candle(1, 100.0, 100.0)).await;
    let id = sent.orders_sent[0].clone();
    // The host dies; the exchange fills the order while nobody listens.
    h.restart(Scripted::default());
    h.exchange
        .feed_candle(&candle(2, 105.0, 105.0))
        .await
        .unwrap();
    while h.events.try_recv().is_ok() {}
    let report = h.engine.recover().await.unwrap();
    assert!(!report.rebuild.differs());
    let order = h.store.tenant(h.user).order(&id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Filled);
    assert_eq!(h.engine.book().positions.len(), 1);
    assert!(
        report.reconciliation.is_clean(),
        "{:?}",
        report.reconciliation
    );
    // The same decision re-made after the restart carries the same client order id, and the
    // store refuses a second entry on the symbol while one is open.
    let again = ClientOrderId::derive(
        h.profile,
        &btc(),
        60_000,
        keel_kernel::ids::IntentKind::Entry,
    );
    assert_eq!(again, id);
}

#[tokio::test]
async fn an_order_the_store_never_wrote_quarantines_the_profile_with_its_evidence_stored() {
    let mut h = Harness::new(Scripted::default()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let unwritten = unwritten_order(&h, 901);
    h.exchange.place(&unwritten).await;
    let report = h.engine.reconcile().await.unwrap();
    assert_eq!(report.mismatches.get("missing_in_db"), Some(&1));
    assert!(report.quarantined);
    assert_eq!(
        h.engine.entry_block(),
        Some(keel_kernel::risk::EntryBlock::Quarantined)
    );
    let stored = stored_quarantine(&h)
        .await
        .expect("the quarantine is stored");
    assert_eq!(Some(&stored), h.engine.quarantine());
    assert!(stored.reason.contains("missing_in_db x1"), "{stored:?}");
    assert_eq!(stored.since_ms, h.clock.now_ms());
    let [evidence] = stored.evidence.as_slice() else {
        panic!("one item of evidence: {stored:?}");
    };
    assert_eq!(evidence.kind, "missing_in_db");
    assert_eq!(evidence.subject, unwritten.client_order_id.as_str());
    assert_eq!(evidence.store, "no such order");
    assert!(evidence.exchange.starts_with("open, NEW"), "{evidence:?}");
    assert_eq!(
        h.metrics
            .quarantine_writes_total
            .with_label_values(&["entered", "committed"])
            .get(),
        1
    );
}

#[tokio::test]
async fn a_quarantine_ends_only_on_a_stored_request_and_at_a_clean_pass() {
    let mut h = Harness::new(Scripted::default()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let unwritten = unwritten_order(&h, 902);
    h.exchange.place(&unwritten).await;
    assert!(h.engine.reconcile().await.unwrap().quarantined);
    let operator = UserId::new_random();
    // Asked while the drift is still there: the pass finds it again and the request is spent.
    request_clear(&h, operator).await;
    assert!(h.engine.reconcile().await.unwrap().quarantined);
    assert!(!h.engine.quarantine_clear_requested());
    assert_eq!(
        stored_quarantine(&h).await.unwrap().clear_requested_by,
        None
    );
    assert!(h.engine.controls().quarantined);
    // The drift explained (the unwritten order gone), but nobody asked: it stays.
    h.exchange
        .cancel(&btc(), &unwritten.client_order_id)
        .await
        .unwrap();
    assert!(h.engine.reconcile().await.unwrap().is_clean());
    assert!(h.engine.controls().quarantined);
    // Asked (through the store, as any instance's API records it), and the pass is clean:
    // cleared, and kept as history naming who asked.
    request_clear(&h, operator).await;
    let report = h.engine.reconcile().await.unwrap();
    assert!(report.is_clean() && report.quarantine_cleared, "{report:?}");
    assert!(!h.engine.controls().quarantined);
    assert_eq!(h.engine.quarantine(), None);
    assert_eq!(h.engine.entry_block(), None);
    assert_eq!(stored_quarantine(&h).await, None);
    let mut tx = h.store.tenant(h.user).begin().await.unwrap();
    let history = tx.quarantine_history(h.profile).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].cleared_by, Some(operator));
}

#[tokio::test]
async fn a_restart_restores_the_stored_quarantine_instead_of_clearing_it() {
    let mut h = Harness::new(Scripted::default()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let unwritten = unwritten_order(&h, 903);
    h.exchange.place(&unwritten).await;
    assert!(h.engine.reconcile().await.unwrap().quarantined);
    let found = stored_quarantine(&h).await.unwrap();
    // The drift goes while the host is down; the engine that starts finds the store and the
    // exchange in agreement, and stays quarantined all the same: nobody asked.
    h.exchange
        .cancel(&btc(), &unwritten.client_order_id)
        .await
        .unwrap();
    h.restart(Scripted::default());
    let report = h.engine.recover().await.unwrap();
    assert!(report.reconciliation.is_clean(), "{report:?}");
    assert!(!report.reconciliation.quarantine_cleared);
    assert!(h.engine.controls().quarantined);
    assert_eq!(
        h.engine.entry_block(),
        Some(keel_kernel::risk::EntryBlock::Quarantined)
    );
    assert_eq!(
        h.engine.quarantine(),
        Some(&found),
        "the stored reason and time"
    );
    // A request recorded while it was down is read by the next pass, which ends it.
    request_clear(&h, h.user).await;
    h.restart(Scripted::default());
    let report = h.engine.recover().await.unwrap();
    assert!(report.reconciliation.quarantine_cleared, "{report:?}");
    assert!(!h.engine.controls().quarantined);
}

/// The profile's open quarantine as stored.
async fn stored_quarantine(h: &Harness) -> Option<QuarantineRecord> {
    let mut tx = h.store.tenant(h.user).begin().await.unwrap();
    let stored = tx.quarantine(h.profile).await.unwrap();
    tx.commit().await.unwrap();
    stored
}

/// Records `by`'s request to end the profile's quarantine, as the API does.
async fn request_clear(h: &Harness, by: UserId) {
    let mut tx = h.store.tenant(h.user).begin().await.unwrap();
    let asked = tx.request_quarantine_clear(h.profile, by).await.unwrap();
    tx.commit().await.unwrap();
    assert!(asked.is_some(), "the profile is quarantined");
}

/// A resting buy on the exchange under a client order id the profile derives (decision `seq`)
/// that its store never wrote: what a lost or restored-from-backup database leaves. (An order
/// under an id the profile does not derive — placed by hand, or another profile's — is not its
/// drift: `shared_account` tests that it is counted as foreign and quarantines nothing.)
fn unwritten_order(h: &Harness, seq: u64) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::derive(
            h.profile,
            &btc(),
            seq,
            keel_kernel::ids::IntentKind::Entry,
        ),
        symbol: btc(),
        side: Side::Buy,
        order_type: OrderType::Limit {
            price: keel_kernel::money::Price::new(dec!(90)).unwrap(),
        },
        qty: Qty::new(dec!(1)).unwrap(),
        reduce_only: false,
    }
}

#[tokio::test]
async fn a_rate_limited_exit_is_sent_again_with_the_same_id_until_it_is_placed() {
    let strategy = Scripted::default()
        .at(1, vec![buy(500.0)])
        .at(3, vec![crate::path::close_all()]);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    h.step(&candle(1, 100.0, 100.0)).await;
    h.step(&candle(2, 100.0, 100.0)).await;
    assert_eq!(h.engine.book().positions.len(), 1);
    // Three refusals in a row: two 429s, then a 503 that says the request was not executed.
    h.gate.refuse_next(
        2,
        PlaceOutcome::RateLimited {
            retry_after_ms: 2_000,
        },
    );
    let decided = h.step(&candle(3, 100.0, 100.0)).await;
    let exit = decided.orders_sent[0].clone();
    assert_eq!(h.gate.attempts.lock().unwrap().last(), Some(&exit));
    let stored = h.store.tenant(h.user).order(&exit).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::PendingSubmit);
    let waiting = || {
        h.metrics
            .orders_awaiting_placement
            .with_label_values(&["exit"])
            .get()
    };
    assert_eq!(waiting(), 1);
    // A reconciliation pass meanwhile neither releases it nor sends it before its wait is over.
    assert!(h.engine.reconcile().await.unwrap().is_clean());
    assert_eq!(h.gate.attempts.lock().unwrap().len(), 2);
    // Past the wait: sent again (refused again), then past the doubled wait and an
    // unavailable answer, then taken.
    h.clock.advance_to(h.clock.now_ms() + 2_000);
    assert!(h.engine.retry_unplaced().await.unwrap().contains(&exit));
    h.gate.refuse_next(
        1,
        PlaceOutcome::Unavailable {
            code: codes::DISCONNECTED,
            msg: "Internal error; unable to process your request. Please try again.".into(),
        },
    );
    h.clock.advance_to(h.clock.now_ms() + 2_000);
    h.engine.retry_unplaced().await.unwrap();
    assert_eq!(waiting(), 1);
    h.clock.advance_to(h.clock.now_ms() + 2_000);
    assert_eq!(h.engine.retry_unplaced().await.unwrap(), vec![exit.clone()]);
    assert_eq!(waiting(), 0);
    let attempts = h.gate.attempts.lock().unwrap().clone();
    assert_eq!(attempts.iter().filter(|id| **id == exit).count(), 4);
    // Taken, then filled at the next candle: the position is closed.
    h.step(&candle(4, 100.0, 100.0)).await;
    let stored = h.store.tenant(h.user).order(&exit).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Filled);
    assert!(h.engine.book().positions.is_empty());
    assert_eq!(
        h.metrics
            .order_placement_retries_total
            .with_label_values(&["exit"])
            .get(),
        3
    );
}

#[tokio::test]
async fn a_rate_limited_entry_is_released_after_its_retry_budget() {
    let strategy = Scripted::default().at(1, vec![buy(500.0)]);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    h.gate.refuse_next(
        u32::MAX,
        PlaceOutcome::RateLimited {
            retry_after_ms: 1_000,
        },
    );
    h.step(&candle(1, 100.0, 100.0)).await;
    let entry = h.gate.attempts.lock().unwrap()[0].clone();
    let budget_ms = keel_kernel::engine::EngineConfig::default().entry_retry_budget_ms;
    let started_ms = h.clock.now_ms();
    while h.clock.now_ms() - started_ms <= budget_ms {
        h.clock.advance_to(h.clock.now_ms() + 1_000);
        h.engine.retry_unplaced().await.unwrap();
    }
    let stored = h.store.tenant(h.user).order(&entry).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Rejected);
    assert!(h.gate.attempts.lock().unwrap().len() > 2);
    assert_eq!(
        h.engine.book().capital.reserved_for_orders.get(),
        rust_decimal::Decimal::ZERO
    );
    assert_eq!(
        h.metrics
            .orders_awaiting_placement
            .with_label_values(&["entry"])
            .get(),
        0
    );
}

/// A request lost while the database refuses the write of UNKNOWN leaves the order
/// PENDING_SUBMIT with nothing stored of when its answer went missing. The window after which it
/// counts as never placed still starts then, not at the first pass that notices it: one pass
/// past the window releases it.
#[tokio::test]
async fn a_request_lost_while_its_status_write_fails_is_released_one_window_after_it_was_sent() {
    let strategy = Scripted::default().at(1, vec![buy(500.0)]);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    h.refuse_order_updates().await;
    h.gate.refuse_next(
        1,
        PlaceOutcome::Unknown {
            reason: "request lost on the way".to_owned(),
        },
    );
    let decided = candle(1, 100.0, 100.0);
    h.clock.advance_to(decided.close_time_ms);
    let sent_ms = decided.close_time_ms;
    let result = h.engine.on_candle(&decided).await;
    assert!(result.is_err(), "the status write was refused: {result:?}");
    h.allow_order_updates().await;
    let id = h.gate.attempts.lock().unwrap()[0].clone();
    let tenant = h.store.tenant(h.user);
    let order = tenant.order(&id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::PendingSubmit);

    let window_ms = keel_kernel::engine::EngineConfig::default().unknown_resolve_after_ms;
    h.clock.advance_to(sent_ms + window_ms / 2);
    let report = h.engine.reconcile().await.unwrap();
    assert!(report.is_clean(), "inside the window: {report:?}");
    h.clock.advance_to(sent_ms + window_ms);
    let report = h.engine.reconcile().await.unwrap();
    let order = tenant.order(&id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Rejected, "{report:?}");
    assert_eq!(report.mismatches.get("missing_on_exchange"), Some(&1));
    assert_eq!(h.gate.attempts.lock().unwrap().len(), 1, "sent once");
    assert!(h.engine.book().open_orders.is_empty());
}

/// A waiting entry past its retry budget whose release the database refuses stays known as never
/// placed: it is not sent again, and the next pass releases it, instead of leaving it
/// PENDING_SUBMIT for a never-placed window that starts only when a pass notices it.
#[tokio::test]
async fn a_waiting_entry_whose_release_fails_is_released_by_the_next_pass() {
    let strategy = Scripted::default().at(1, vec![buy(500.0)]);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    h.gate.refuse_next(
        1,
        PlaceOutcome::RateLimited {
            retry_after_ms: 1_000,
        },
    );
    h.step(&candle(1, 100.0, 100.0)).await;
    let entry = h.gate.attempts.lock().unwrap()[0].clone();
    h.refuse_order_updates().await;
    let budget_ms = keel_kernel::engine::EngineConfig::default().entry_retry_budget_ms;
    h.clock.advance_to(h.clock.now_ms() + budget_ms);
    let result = h.engine.reconcile().await;
    assert!(result.is_err(), "the release was refused: {result:?}");
    h.allow_order_updates().await;
    let tenant = h.store.tenant(h.user);
    let stored = tenant.order(&entry).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::PendingSubmit);
    let waiting = || {
        h.metrics
            .orders_awaiting_placement
            .with_label_values(&["entry"])
            .get()
    };
    assert_eq!(waiting(), 1, "still known as never placed");

    let report = h.engine.reconcile().await.unwrap();
    let stored = tenant.order(&entry).await.unwrap().unwrap();
    assert_eq!(stored.status, OrderStatus::Rejected, "{report:?}");
    assert_eq!(h.gate.attempts.lock().unwrap().len(), 1, "never sent again");
    assert_eq!(waiting(), 0);
    assert!(h.engine.book().open_orders.is_empty());
    assert_eq!(
        h.engine.book().capital.reserved_for_orders.get(),
        rust_decimal::Decimal::ZERO
    );
}
