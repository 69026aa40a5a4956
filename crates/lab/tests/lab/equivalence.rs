//! The sma-cross plugin and the same logic compiled natively answer every candle alike: the
//! kernel can test against either behind `StrategyRuntime`.

use std::sync::Arc;

use keel_kernel::engine::VirtualClock;
use keel_kernel::ids::{ProfileId, Symbol};
use keel_kernel::market::Candle;
use keel_kernel::strategy::{AccountView, PositionView, RawIntent, StrategyRuntime};
use keel_lab::native::NativeSmaCross;
use keel_runtime::{EngineSettings, InstanceSetup, PluginEngine};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Kernel time of the first candle.
const T0_MS: i64 = 1_700_000_000_000;
/// One-minute candles.
const CANDLE_MS: i64 = 60_000;

/// Candle number `index` of a stream on BTCUSDT, flat at `close`.
fn candle(index: i64, close: f64) -> Candle {
    let open_time_ms = T0_MS + index * CANDLE_MS;
    Candle {
        symbol: Symbol::new("BTCUSDT").unwrap(),
        open_time_ms,
        close_time_ms: open_time_ms + CANDLE_MS,
        open: close,
        high: close,
        low: close,
        close,
        volume: 1.0,
    }
}

/// Applies the strategy's requests to a toy account so both see the positions they built.
fn apply(view: &mut AccountView, intents: &[RawIntent]) {
    for intent in intents {
        match intent {
            RawIntent::Exit(exit) => view.positions.retain(|p| p.symbol != exit.symbol),
            RawIntent::Entry(entry) => view.positions.push(PositionView {
                symbol: entry.symbol.clone(),
                side: entry.side,
                qty: 1.0,
                entry_price: 100.0,
            }),
            _ => {}
        }
    }
}

#[test]
fn wasm_and_native_sma_cross_agree_on_a_random_walk() {
    let seed: u64 = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_26);
    println!("random walk seed: {seed} (set KEEL_TEST_SEED to replay)");
    let config = [
        ("fast", "5"),
        ("slow", "20"),
        ("mode", "long-short"),
        ("size_fraction", "0.25"),
    ];
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let version = engine
        .load(&keel_testkit::example_plugin_bytes("sma-cross"))
        .unwrap();
    let setup = InstanceSetup::new(ProfileId::new_random(), Arc::new(VirtualClock::new(T0_MS)))
        .config(config.iter().copied());
    let mut wasm = engine.start(&version, setup).unwrap();
    let mut native = NativeSmaCross::new();
    let pairs: Vec<_> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    native.init(&pairs).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut view, mut price, mut signals) = (AccountView::default(), 100.0_f64, 0);
    for index in 0..5_000 {
        price *= 1.0 + rng.gen_range(-0.01..0.01);
        let candle = candle(index, price);
        let from_wasm = wasm.on_candle(&candle, &view).unwrap();
        let from_native = native.on_candle(&candle, &view).unwrap();
        assert_eq!(from_wasm, from_native, "candle {index}, seed {seed}");
        signals += from_wasm.len();
        apply(&mut view, &from_wasm);
    }
    assert!(signals > 20, "the walk should cross often: {signals}");
}
