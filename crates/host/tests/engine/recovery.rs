//! Restart durability and reconciliation against the exchange's truth.

use keel_kernel::exchange::{Exchange, OrderRequest, OrderType};
use keel_kernel::ids::ClientOrderId;
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
async fn an_order_the_store_never_wrote_quarantines_the_profile() {
    let mut h = Harness::new(Scripted::default()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let foreign = manual_order("manual-order-1");
    h.exchange.place(&foreign).await;
    let report = h.engine.reconcile().await.unwrap();
    assert_eq!(report.mismatches.get("missing_in_db"), Some(&1));
    assert!(report.quarantined);
    assert_eq!(h.metrics.profiles_quarantined.get(), 1);
    assert_eq!(
        h.engine.entry_block(),
        Some(keel_kernel::risk::EntryBlock::Quarantined)
    );
}

#[tokio::test]
async fn a_quarantine_ends_only_on_request_and_at_a_clean_pass() {
    let mut h = Harness::new(Scripted::default()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let foreign = manual_order("manual-order-2");
    h.exchange.place(&foreign).await;
    assert!(h.engine.reconcile().await.unwrap().quarantined);
    // Asked while the drift is still there: the pass finds it again and the request is spent.
    h.engine.request_quarantine_clear();
    assert!(h.engine.reconcile().await.unwrap().quarantined);
    assert!(!h.engine.quarantine_clear_requested());
    assert!(h.engine.controls().quarantined);
    // The drift explained (the manual order gone), but nobody asked: it stays.
    h.exchange
        .cancel(&btc(), &foreign.client_order_id)
        .await
        .unwrap();
    assert!(h.engine.reconcile().await.unwrap().is_clean());
    assert!(h.engine.controls().quarantined);
    assert_eq!(h.metrics.profiles_quarantined.get(), 1);
    // Asked, and the pass is clean: cleared, and the gauge follows.
    h.engine.request_quarantine_clear();
    assert!(h.engine.reconcile().await.unwrap().is_clean());
    assert!(!h.engine.controls().quarantined);
    assert_eq!(h.engine.entry_block(), None);
    assert_eq!(h.metrics.profiles_quarantined.get(), 0);
}

#[tokio::test]
async fn an_engine_that_ends_in_quarantine_leaves_the_gauge() {
    let mut h = Harness::new(Scripted::default()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let foreign = manual_order("manual-order-3");
    h.exchange.place(&foreign).await;
    assert!(h.engine.reconcile().await.unwrap().quarantined);
    assert_eq!(h.metrics.profiles_quarantined.get(), 1);
    // A restart (or a takeover elsewhere) drops the engine: this instance owns no quarantine.
    h.restart(Scripted::default());
    assert_eq!(h.metrics.profiles_quarantined.get(), 0);
}

/// A resting buy placed on the exchange outside Keel (by hand, in the exchange's own UI).
fn manual_order(id: &str) -> OrderRequest {
    OrderRequest {
        client_order_id: ClientOrderId::new(id).unwrap(),
        symbol: btc(),
        side: Side::Buy,
        order_type: OrderType::Limit {
            price: keel_kernel::money::Price::new(dec!(90)).unwrap(),
        },
        qty: Qty::new(dec!(1)).unwrap(),
        reduce_only: false,
    }
}
