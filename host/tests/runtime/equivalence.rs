//! The sma-cross plugin and the same logic compiled natively answer every candle alike: the
//! kernel can test against either behind `StrategyRuntime`.

use keel_host::runtime::NativeSmaCross;
use keel_kernel::strategy::{AccountView, PositionView, RawIntent, StrategyRuntime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{candle, engine, start};

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
    let mut wasm = start(engine(), "sma-cross", &config);
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
