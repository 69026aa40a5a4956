//! Two profiles of one owner on one exchange account: each engine hears every event of the
//! account, and applies only its own orders' (those whose client order id it derives).

use std::sync::Arc;

use keel_kernel::engine::EngineConfig;
use keel_kernel::exchange::Exchange as _;
use keel_kernel::metrics::Metrics;
use keel_kernel::money::Amount;
use rust_decimal_macros::dec;

use crate::harness::{Harness, Scripted, btc, build_engine, candle};
use crate::path::buy;

fn foreign(metrics: &Metrics, kind: &str) -> f64 {
    let series = format!("keel_exchange_foreign_events_total{{kind=\"{kind}\"}}");
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} is not exposed"))
}

#[tokio::test]
async fn a_sibling_on_the_same_account_ignores_the_other_profiles_orders_and_fills() {
    let mut h = Harness::new(Scripted::default().at(1, vec![buy(500.0)])).await;
    let store = h.store.clone();
    let tenant = store.tenant(h.user);
    let sibling = tenant.create_profile("sibling").await.unwrap();
    h.store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(h.user, dec!(1000))
        .await
        .unwrap();
    tenant
        .allocate(sibling, Amount::positive(dec!(1000)).unwrap())
        .await
        .unwrap();
    let sibling_metrics = Arc::new(Metrics::new());
    let mut sibling_engine = build_engine(
        &h.store,
        &h.gate,
        &h.clock,
        &sibling_metrics,
        &h.switches,
        h.user,
        sibling,
        Box::new(Scripted::default()),
        EngineConfig::default(),
    );
    sibling_engine.recover().await.unwrap();
    let mut sibling_events = h.exchange.user_events().await.unwrap();

    for minute in 0..3 {
        h.step(&candle(minute, 100.0, 100.0)).await;
        while let Ok(event) = sibling_events.try_recv() {
            sibling_engine.on_user_event(&event).await.unwrap();
        }
    }
    // The owner's long is open; the sibling heard its order and its fill and applied neither.
    assert_eq!(h.engine.book().positions[&btc()].qty_open, dec!(5));
    assert!(foreign(&sibling_metrics, "order") >= 1.0);
    assert!(foreign(&sibling_metrics, "fill") >= 1.0);
    assert_eq!(foreign(&h.metrics, "fill"), 0.0);
    assert!(sibling_engine.book().positions.is_empty());
    assert!(
        sibling_engine.foreign_events() >= 2,
        "its health counts them"
    );
    assert_eq!(h.engine.foreign_events(), 0);
    let capital = tenant.capital(sibling).await.unwrap();
    assert_eq!(
        (
            capital.reserved_for_positions.get(),
            capital.realized_pnl.get()
        ),
        (dec!(0), dec!(0))
    );

    // An order placed on the account by hand stays open there: the owner's reconciliation
    // counts it once as foreign and does not quarantine for it. (The sibling trades the same
    // symbol on the same account, which `keel serve` refuses — one profile per account and
    // symbol — so its reconciliation would see the owner's position as its own drift.)
    let manual = keel_kernel::exchange::OrderRequest {
        client_order_id: keel_kernel::ids::ClientOrderId::new("by-hand-1").unwrap(),
        symbol: btc(),
        side: keel_kernel::market::Side::Buy,
        order_type: keel_kernel::exchange::OrderType::Limit {
            price: keel_kernel::money::Price::new(dec!(50)).unwrap(),
        },
        qty: keel_kernel::money::Qty::new(dec!(1)).unwrap(),
        reduce_only: false,
    };
    let placed = h.exchange.with_engine(|e| e.place(&manual));
    assert!(
        matches!(placed, keel_kernel::exchange::PlaceOutcome::Accepted(_)),
        "{placed:?}"
    );
    for _ in 0..2 {
        let report = h.engine.reconcile().await.unwrap();
        assert!(!report.quarantined, "{report:?}");
    }
    assert_eq!(foreign(&h.metrics, "open_order"), 1.0);
    assert_eq!(h.engine.foreign_events(), 1);
}
