//! The path of one decision: validation, write-ahead, exchange, confirmation, ledger.

use std::sync::atomic::Ordering;

use keel_kernel::lock::{LockKey, LockKind, OwnerToken};
use keel_kernel::order::OrderStatus;
use keel_kernel::risk::RefusalRule;
use keel_kernel::strategy::{PositionSide, RawEntry, RawExit, RawIntent, RawPrice, RawSize};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::harness::{Harness, Scripted, btc, candle};

pub fn buy(quote: f64) -> RawIntent {
    RawIntent::Entry(RawEntry {
        symbol: "BTCUSDT".into(),
        side: PositionSide::Long,
        size: RawSize::QuoteNotional(quote),
        price: RawPrice::Market,
        stop_loss: None,
        take_profit: None,
        tag: "test".into(),
    })
}

pub fn close_all() -> RawIntent {
    RawIntent::Exit(RawExit {
        symbol: "BTCUSDT".into(),
        fraction: 1.0,
        price: RawPrice::Market,
        tag: String::new(),
    })
}

#[tokio::test]
async fn entry_then_exit_moves_capital_through_the_ledger() {
    let strategy = Scripted::default()
        .at(1, vec![buy(500.0)])
        .at(3, vec![close_all()]);
    let mut h = Harness::new(strategy.clone()).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let sent = h.step(&candle(1, 100.0, 100.0)).await;
    let refusals: Vec<_> = h.engine.refusals().collect();
    assert_eq!(sent.orders_sent.len(), 1, "{sent:?} {refusals:?}");
    let id = sent.orders_sent[0].clone();
    // A market order is accepted now and fills at the next candle's open.
    let order = h.store.tenant(h.user).order(&id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::New);
    assert!(h.engine.book().capital.reserved_for_orders.get() > Decimal::ZERO);

    h.step(&candle(2, 110.0, 110.0)).await;
    let order = h.store.tenant(h.user).order(&id).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Filled);
    let capital = h.engine.book().capital;
    assert_eq!(capital.reserved_for_orders.get(), Decimal::ZERO);
    assert_eq!(capital.reserved_for_positions.get(), dec!(5) * dec!(110));
    assert_eq!(strategy.fills_seen.lock().unwrap().len(), 1);

    h.step(&candle(3, 120.0, 120.0)).await;
    h.step(&candle(4, 130.0, 130.0)).await;
    let capital = h.engine.book().capital;
    assert_eq!(capital.reserved_for_positions.get(), Decimal::ZERO);
    assert!(h.engine.book().positions.is_empty());
    // Bought 5 at 110, sold 5 at 130: +100 before fees; fees are 4 bps of each notional.
    let fees = (dec!(550) + dec!(650)) * dec!(0.0004);
    assert_eq!(capital.realized_pnl.get(), dec!(100) - fees);
    assert!(capital.holds_invariant());
    let report = h.engine.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn a_second_entry_while_one_is_in_flight_is_refused_not_sent() {
    let strategy = Scripted::default().at(1, vec![buy(500.0), buy(500.0)]);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let outcome = h.step(&candle(1, 100.0, 100.0)).await;
    assert_eq!(outcome.orders_sent.len(), 1);
    let open = h.exchange.with_engine(|e| e.open_orders(None));
    assert_eq!(open.len(), 1);
    assert!(
        h.engine
            .refusals()
            .any(|r| r.rule == RefusalRule::EntryInFlight)
    );
}

#[tokio::test]
async fn an_entry_while_a_position_is_open_is_refused_and_the_step_succeeds() {
    let strategy = Scripted::default()
        .at(1, vec![buy(500.0)])
        .at(3, vec![buy(500.0)]);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    h.step(&candle(1, 100.0, 100.0)).await;
    h.step(&candle(2, 100.0, 100.0)).await;
    assert_eq!(h.engine.book().positions.len(), 1, "the first entry filled");
    let second = h.step(&candle(3, 100.0, 100.0)).await;
    assert!(second.orders_sent.is_empty(), "{second:?}");
    let last = h.engine.refusals().last().unwrap();
    assert_eq!(last.rule, RefusalRule::EntryInFlight, "{last:?}");
    // The refused write-ahead took the entry lock in its own transaction, rolled back with it.
    let key = LockKey::entry(h.engine.profile(), &btc());
    let free = h
        .store
        .locks()
        .acquire(LockKind::Entry, &key, OwnerToken::new_random(), 60_000)
        .await
        .unwrap();
    assert!(free.is_some(), "a refused entry leaves its lock free");
}

#[tokio::test]
async fn hostile_numbers_never_reach_the_exchange() {
    let hostile = |size| {
        RawIntent::Entry(RawEntry {
            symbol: "BTCUSDT".into(),
            side: PositionSide::Long,
            size,
            price: RawPrice::Market,
            stop_loss: None,
            take_profit: None,
            tag: String::new(),
        })
    };
    let intents = vec![
        hostile(RawSize::BaseQty(f64::NAN)),
        hostile(RawSize::BaseQty(f64::INFINITY)),
        hostile(RawSize::QuoteNotional(-5.0)),
        hostile(RawSize::BaseQty(1e300)),
    ];
    let mut h = Harness::new(Scripted::default().at(1, intents)).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let outcome = h.step(&candle(1, 100.0, 100.0)).await;
    assert_eq!(outcome.refused, 4);
    assert!(outcome.orders_sent.is_empty());
    assert!(h.exchange.with_engine(|e| e.open_orders(None)).is_empty());
    let refused = h
        .metrics
        .risk_refusals_total
        .with_label_values(&[RefusalRule::InvalidNumber.as_str()])
        .get();
    assert_eq!(refused, 4);
}

#[tokio::test]
async fn host_kill_switch_blocks_entries_but_not_exits() {
    let strategy = Scripted::default()
        .at(1, vec![buy(500.0)])
        .at(3, vec![buy(200.0)])
        .at(4, vec![close_all()]);
    let mut h = Harness::new(strategy).await;
    for minute in 0..3 {
        h.step(&candle(minute, 100.0, 100.0)).await;
    }
    assert_eq!(h.engine.book().positions.len(), 1);
    h.switches.kill.store(true, Ordering::Relaxed);
    let blocked = h.step(&candle(3, 100.0, 100.0)).await;
    assert!(blocked.orders_sent.is_empty());
    assert!(
        h.engine
            .refusals()
            .any(|r| r.rule == RefusalRule::EntryBlocked)
    );
    let exit = h.step(&candle(4, 100.0, 100.0)).await;
    assert_eq!(exit.orders_sent.len(), 1);
    h.step(&candle(5, 100.0, 100.0)).await;
    assert!(h.engine.book().positions.is_empty());
}

#[tokio::test]
async fn a_plugin_fault_pauses_entries_for_that_profile() {
    let mut strategy = Scripted::default().at(2, vec![buy(500.0)]);
    strategy.fault_at = Some(60_000);
    let mut h = Harness::new(strategy).await;
    h.step(&candle(0, 100.0, 100.0)).await;
    let faulted = h.step(&candle(1, 100.0, 100.0)).await;
    assert!(faulted.fault.is_some());
    assert_eq!(
        h.metrics
            .plugin_faults_total
            .with_label_values(&["fuel"])
            .get(),
        1
    );
    // The next healthy call clears the block, and its entry goes through.
    let next = h.step(&candle(2, 100.0, 100.0)).await;
    assert_eq!(next.orders_sent.len(), 1);
}

/// The book is the engine's cache of the store: after every step of entries, fills, exits and
/// a refused second entry, its capital, positions and open orders are the store's.
#[tokio::test]
async fn the_book_mirrors_the_store_after_every_step() {
    let strategy = Scripted::default()
        .at(1, vec![buy(500.0)])
        .at(3, vec![buy(500.0)])
        .at(4, vec![close_all()])
        .at(6, vec![buy(300.0)])
        .at(8, vec![close_all()]);
    let mut h = Harness::new(strategy).await;
    let prices = [
        100.0, 101.0, 103.0, 99.0, 97.0, 102.0, 104.0, 108.0, 105.0, 100.0, 99.0,
    ];
    for (minute, close) in prices.into_iter().enumerate() {
        let minute = i64::try_from(minute).unwrap();
        h.step(&candle(minute, close, close)).await;
        let tenant = h.store.tenant(h.user);
        let profile = h.engine.profile();
        let book = h.engine.book();
        assert_eq!(
            book.capital,
            tenant.capital(profile).await.unwrap(),
            "capital after step {minute}"
        );
        let positions: Vec<_> = book.positions.values().cloned().collect();
        assert_eq!(
            positions,
            tenant.positions(profile).await.unwrap(),
            "positions after step {minute}"
        );
        let open: Vec<_> = book.open_orders.values().cloned().collect();
        let mut stored = tenant.open_orders(profile).await.unwrap();
        stored.sort_by(|a, b| a.client_order_id.cmp(&b.client_order_id));
        assert_eq!(open, stored, "open orders after step {minute}");
    }
    let fills = h
        .store
        .tenant(h.user)
        .capital(h.engine.profile())
        .await
        .unwrap();
    assert_ne!(fills.realized_pnl.get(), Decimal::ZERO, "the script traded");
}
