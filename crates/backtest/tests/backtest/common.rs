//! Paths of the example plugins and generated candle files.

use keel_backtest::run::{BacktestSpec, BacktestStore, load_inputs};
use keel_backtest::synthetic::random_walk;
use keel_kernel::ids::Symbol;
use rust_decimal_macros::dec;

/// Candles of the generated files: two weeks of minutes.
pub const CANDLES: usize = 20_000;

pub fn symbol() -> Symbol {
    Symbol::new("BTCUSDT").unwrap()
}

pub use keel_testkit::example_plugin_path as plugin_path;

/// A spec over generated candles with 10,000 of capital and a 4 bps fee.
pub fn spec(plugin: &str, seed: u64) -> BacktestSpec {
    let (bytes, name) = load_inputs(&plugin_path(plugin)).unwrap();
    BacktestSpec {
        plugin: bytes,
        plugin_name: name,
        candles: random_walk(&symbol(), CANDLES, seed),
        symbol: symbol(),
        config: Vec::new(),
        capital: dec!(10000),
        fee_bps: dec!(4),
        partial_fill_probability: 0.0,
        store: BacktestStore::Memory,
        seed,
        notional_max: None,
        slippage_reserve_bps: 100,
    }
}
