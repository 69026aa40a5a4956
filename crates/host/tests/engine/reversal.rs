//! Reversals: an exit and an entry on the other side in one decision. The exit goes first; the
//! entry is decided once the exit closed the position, within the profile's limits.

use keel_kernel::ids::{ClientOrderId, IntentKind};
use keel_kernel::risk::RefusalRule;
use keel_kernel::strategy::{PositionSide, RawEntry, RawExit, RawIntent, RawPrice, RawSize};
use rust_decimal::Decimal;

use crate::harness::{Harness, Scripted, btc, candle};
use crate::path::{buy, close_all};

fn sell(quote: f64) -> RawIntent {
    RawIntent::Entry(RawEntry {
        symbol: "BTCUSDT".into(),
        side: PositionSide::Short,
        size: RawSize::QuoteNotional(quote),
        price: RawPrice::Market,
        stop_loss: None,
        take_profit: None,
        tag: "reverse".into(),
    })
}

/// A long of 5 at 100 opened by candle 2.
async fn long_held(strategy: Scripted) -> Harness {
    let mut h = Harness::new(strategy.at(1, vec![buy(500.0)])).await;
    for minute in 0..3 {
        h.step(&candle(minute, 100.0, 100.0)).await;
    }
    let position = &h.engine.book().positions[&btc()];
    assert_eq!(position.qty_open.get(), Decimal::from(5));
    h
}

#[tokio::test]
async fn a_reversal_sends_its_entry_once_the_exit_closed_the_position() {
    let strategy = Scripted::default().at(3, vec![close_all(), sell(500.0)]);
    let mut h = long_held(strategy).await;
    let decided = h.step(&candle(3, 100.0, 100.0)).await;
    // Only the exit went out; the entry waits, refused by nothing.
    assert_eq!(decided.orders_sent.len(), 1, "{decided:?}");
    assert_eq!(
        decided.refused,
        0,
        "{:?}",
        h.engine.refusals().collect::<Vec<_>>()
    );
    let exit_id = &decided.orders_sent[0];
    let exit = h
        .store
        .tenant(h.user)
        .order(exit_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.kind, IntentKind::Exit);

    // The exit fills at candle 4's open; hearing of it, the engine sends the short.
    h.step(&candle(4, 110.0, 110.0)).await;
    assert!(h.engine.book().positions.is_empty());
    let entry_id = ClientOrderId::derive(h.profile, &btc(), 3 * 60_000, IntentKind::Entry);
    let entry = h.store.tenant(h.user).order(&entry_id).await.unwrap();
    let entry = entry.expect("the reversal's entry was written ahead and sent");
    assert_eq!(entry.kind, IntentKind::Entry);
    assert_eq!(entry.side, keel_kernel::market::Side::Sell);

    h.step(&candle(5, 120.0, 120.0)).await;
    let position = &h.engine.book().positions[&btc()];
    assert_eq!(
        keel_kernel::engine::book::position_side(position.side, IntentKind::Entry),
        PositionSide::Short
    );
    assert_eq!(h.engine.refusals().count(), 0);
    assert!(h.engine.book().capital.holds_invariant());
}

#[tokio::test]
async fn a_reversal_whose_exit_ends_without_closing_refuses_its_entry() {
    // A limit exit far above the market rests; the strategy then cancels it.
    let limit_exit = RawIntent::Exit(RawExit {
        symbol: "BTCUSDT".into(),
        fraction: 1.0,
        price: RawPrice::Limit(104.0),
        tag: String::new(),
    });
    let strategy = Scripted::default().at(3, vec![limit_exit, sell(500.0)]);
    let mut h = long_held(strategy.clone()).await;
    let decided = h.step(&candle(3, 100.0, 100.0)).await;
    assert_eq!(decided.orders_sent.len(), 1, "{decided:?}");
    let cancel = RawIntent::Cancel {
        client_order_id: decided.orders_sent[0].to_string(),
    };
    strategy
        .script
        .lock()
        .unwrap()
        .insert(4 * 60_000, vec![cancel]);
    h.step(&candle(4, 100.0, 100.0)).await;
    h.step(&candle(5, 100.0, 100.0)).await;

    assert_eq!(h.engine.book().positions.len(), 1, "the long is still held");
    let refusals: Vec<_> = h.engine.refusals().collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].rule, RefusalRule::ReversalAbandoned);
    assert!(
        refusals[0].reason.contains("position still open"),
        "{refusals:?}"
    );
    let entry_id = ClientOrderId::derive(h.profile, &btc(), 3 * 60_000, IntentKind::Entry);
    let entry = h.store.tenant(h.user).order(&entry_id).await.unwrap();
    assert!(entry.is_none(), "the entry never reached the exchange");
}

#[tokio::test]
async fn an_entry_on_the_held_side_after_an_exit_is_no_reversal() {
    let strategy = Scripted::default().at(3, vec![close_all(), buy(500.0)]);
    let mut h = long_held(strategy).await;
    let decided = h.step(&candle(3, 100.0, 100.0)).await;
    assert_eq!(decided.orders_sent.len(), 1);
    let refusals: Vec<_> = h.engine.refusals().collect();
    assert_eq!(
        refusals.len(),
        1,
        "the long entry is refused at once: {refusals:?}"
    );
    assert!(
        !refusals[0].rule.as_str().starts_with("reversal"),
        "{refusals:?}"
    );
    h.step(&candle(4, 100.0, 100.0)).await;
    h.step(&candle(5, 100.0, 100.0)).await;
    assert!(
        h.engine.book().positions.is_empty(),
        "nothing was re-entered"
    );
}
