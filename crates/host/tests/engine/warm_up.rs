//! A strategy instance that starts fresh — after a restart, a takeover or a hot-swap — is first
//! replayed the recent candles it would have seen, its requests discarded.

use std::sync::Arc;

use keel_backtest::synthetic::random_walk;
use keel_kernel::engine::{CandleHistory, EngineConfig, VirtualClock, WARM_UP_CANDLES_DEFAULT};
use keel_kernel::exchange::{Exchange, Interval};
use keel_kernel::ids::ProfileId;
use keel_kernel::market::Candle;
use keel_kernel::strategy::{PositionSide, RawEntry, RawIntent, RawPrice, RawSize};
use keel_runtime::{EngineSettings, InstanceSetup, PluginEngine, SwapHandle};

use crate::harness::{Harness, Scripted, btc, candle};

fn entry() -> RawIntent {
    RawIntent::Entry(RawEntry {
        symbol: "BTCUSDT".to_owned(),
        side: PositionSide::Long,
        size: RawSize::QuoteNotional(100.0),
        price: RawPrice::Market,
        stop_loss: None,
        take_profit: None,
        tag: "warm-up".to_owned(),
    })
}

fn minutes(candles: &[i64]) -> Vec<i64> {
    candles.iter().map(|ms| ms / 60_000).collect()
}

#[tokio::test]
async fn a_swapped_in_strategy_catches_up_on_recent_candles_and_nothing_it_asks_meanwhile_is_sent()
{
    let mut h = Harness::new(Scripted::default()).await;
    for minute in 0..20 {
        h.step(&candle(minute, 100.0, 100.0)).await;
    }
    // The new strategy would enter on a candle it only sees while catching up.
    let fresh = Scripted::default().at(7, vec![entry()]);
    h.engine.swap_strategy(Box::new(fresh.clone()));
    let outcome = h.step(&candle(20, 100.0, 100.0)).await;

    assert_eq!(
        minutes(&fresh.candles_seen.lock().unwrap()),
        (0..=20).collect::<Vec<_>>(),
        "the recent candles, oldest first, then the live one"
    );
    assert!(outcome.orders_sent.is_empty(), "{outcome:?}");
    assert!(h.exchange.with_engine(|e| e.open_orders(None)).is_empty());
    assert_eq!(h.metrics.warm_up_candles_total.get(), 20);

    // Caught up once: the next candle is just the next candle.
    h.step(&candle(21, 100.0, 100.0)).await;
    assert_eq!(fresh.candles_seen.lock().unwrap().len(), 22);
    assert_eq!(h.metrics.warm_up_candles_total.get(), 20);
}

#[tokio::test]
async fn a_restarted_engine_catches_up_on_the_exchanges_recent_candles_and_keeps_the_newest() {
    let mut h = Harness::new(Scripted::default()).await;
    for minute in 0..30 {
        h.step(&candle(minute, 100.0, 100.0)).await;
    }
    let fresh = Scripted::default();
    h.restart(fresh.clone());
    let recent = h
        .exchange
        .recent_candles(&btc(), Interval::M1, 25)
        .await
        .unwrap();
    assert_eq!(recent.len(), 25);
    assert_eq!(recent[0].open_time_ms, 5 * 60_000);
    // Given twice, and with the first live candle among them: each is replayed once, and the
    // live one is decided on live.
    h.engine.remember_candles(recent.clone());
    h.engine.remember_candles(recent);
    h.engine.recover().await.unwrap();
    h.step(&candle(29, 100.0, 100.0)).await;
    h.step(&candle(30, 100.0, 100.0)).await;
    assert_eq!(
        minutes(&fresh.candles_seen.lock().unwrap()),
        (5..=30).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn warm_up_keeps_at_most_the_configured_number_of_candles_and_zero_turns_it_off() {
    for (kept, expected) in [(8_usize, (12..=20).collect::<Vec<i64>>()), (0, vec![20])] {
        let config = EngineConfig {
            warm_up_candles_max: kept,
            ..EngineConfig::default()
        };
        let mut h = Harness::with(Box::new(Scripted::default()), config).await;
        for minute in 0..20 {
            h.step(&candle(minute, 100.0, 100.0)).await;
        }
        let fresh = Scripted::default();
        h.engine.swap_strategy(Box::new(fresh.clone()));
        h.step(&candle(20, 100.0, 100.0)).await;
        assert_eq!(minutes(&fresh.candles_seen.lock().unwrap()), expected);
    }
}

#[tokio::test]
async fn engines_sharing_a_history_keep_each_candle_once_and_a_new_one_catches_up_from_it() {
    let history = Arc::new(CandleHistory::new(WARM_UP_CANDLES_DEFAULT));
    let mut first = Harness::new(Scripted::default()).await;
    let mut second = Harness::new(Scripted::default()).await;
    first.engine.share_history(history.clone());
    second.engine.share_history(history.clone());
    for minute in 0..10 {
        first.step(&candle(minute, 100.0, 100.0)).await;
        second.step(&candle(minute, 100.0, 100.0)).await;
    }
    assert_eq!(
        history.len(),
        10,
        "each candle is kept once for both engines"
    );

    // An engine started now (as after a takeover) catches up on what the others were fed.
    let fresh = Scripted::default();
    second.restart(fresh.clone());
    second.engine.share_history(history.clone());
    second.engine.recover().await.unwrap();
    second.step(&candle(10, 100.0, 100.0)).await;
    assert_eq!(
        minutes(&fresh.candles_seen.lock().unwrap()),
        (0..=10).collect::<Vec<_>>()
    );
}

fn plugin(name: &str) -> Vec<u8> {
    let path = keel_testkit::repo_root()
        .join("plugins-example/target/wasm32-wasip2/release")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins with scripts/build-plugins",
            path.display()
        )
    })
}

/// The minutes of `candles` at which the engine sent an order, hot-swapping a fresh instance of
/// the same plugin in at candle `swap_at` (if any).
async fn order_minutes(candles: &[Candle], swap_at: Option<usize>, warm_up: usize) -> Vec<i64> {
    let plugins = PluginEngine::new(EngineSettings::default()).unwrap();
    let version = plugins.load(&plugin("sma_cross.wasm")).unwrap();
    let setup = InstanceSetup::new(ProfileId::new_random(), Arc::new(VirtualClock::new(0)))
        .config([("fast", "5"), ("slow", "30")]);
    let strategy = plugins.start(&version, setup.clone()).unwrap();
    let swap: SwapHandle = strategy.swap_handle();
    let config = EngineConfig {
        warm_up_candles_max: warm_up,
        ..EngineConfig::default()
    };
    let mut h = Harness::with(Box::new(strategy), config).await;
    let mut sent = Vec::new();
    for (index, candle) in candles.iter().enumerate() {
        if swap_at == Some(index) {
            swap.hot_swap(&version, setup.clone()).unwrap();
        }
        if !h.step(candle).await.orders_sent.is_empty() {
            sent.push(candle.open_time_ms / 60_000);
        }
    }
    sent
}

#[tokio::test]
async fn a_hot_swapped_wasm_strategy_decides_exactly_as_if_it_had_run_all_along() {
    let candles: Vec<Candle> = random_walk(&btc(), 400, 7)
        .into_iter()
        .enumerate()
        .map(|(i, c)| Candle {
            open_time_ms: i as i64 * 60_000,
            close_time_ms: (i as i64 + 1) * 60_000,
            ..c
        })
        .collect();
    let all_along = order_minutes(&candles, None, 500).await;
    // Swap a few candles before an order the uninterrupted strategy sends, well after the
    // start: a blind instance could not send it (its 30-candle window is not full).
    let target = *all_along
        .iter()
        .find(|&&minute| minute > 150)
        .expect("sma-cross trades on this walk after minute 150");
    let swap_at = usize::try_from(target - 3).unwrap();
    let after = |orders: Vec<i64>| -> Vec<i64> {
        orders
            .into_iter()
            .filter(|&m| m >= swap_at as i64)
            .collect()
    };

    let warmed = order_minutes(&candles, Some(swap_at), 500).await;
    assert_eq!(after(warmed), after(all_along.clone()));

    let blind = order_minutes(&candles, Some(swap_at), 0).await;
    assert_ne!(
        after(blind),
        after(all_along),
        "without warm-up the fresh instance misses the order at minute {target}"
    );
}

/// A fault while catching up was once not counted by its kind (a Wasm instance's showed up
/// only as `dead`, on the live call after it).
#[tokio::test]
async fn a_fault_during_warm_up_is_counted_by_its_own_kind() {
    let mut h = Harness::new(Scripted::default()).await;
    for minute in 0..20 {
        h.step(&candle(minute, 100.0, 100.0)).await;
    }
    let fresh = Scripted {
        fault_at: Some(7 * 60_000),
        ..Scripted::default()
    };
    h.engine.swap_strategy(Box::new(fresh.clone()));
    h.step(&candle(20, 100.0, 100.0)).await;

    let faults = |kind: &str| {
        h.metrics
            .plugin_faults_total
            .with_label_values(&[kind])
            .get()
    };
    assert_eq!(faults("fuel"), 1);
    assert_eq!(faults("dead"), 0);
    assert_eq!(
        h.metrics.warm_up_candles_total.get(),
        7,
        "the replay ends at the fault"
    );
}
