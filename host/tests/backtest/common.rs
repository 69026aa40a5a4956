//! Paths of the example plugins and generated candle files.

use std::path::{Path, PathBuf};

use keel_host::backtest::run::{BacktestSpec, BacktestStore, load_inputs};
use keel_host::backtest::synthetic::{random_walk, to_plain_csv};
use keel_kernel::ids::Symbol;
use rust_decimal_macros::dec;

/// Candles of the generated files: two weeks of minutes.
pub const CANDLES: usize = 20_000;

pub fn symbol() -> Symbol {
    Symbol::new("BTCUSDT").unwrap()
}

/// The file of an example plugin (crate name, e.g. `sma-cross`).
pub fn plugin_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins-example/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "example plugin {} is missing: build the plugins first with scripts/build-plugins",
        path.display()
    );
    path
}

/// Writes `CANDLES` generated candles as a plain CSV into `dir`.
pub fn candle_file(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("candles-{seed}.csv"));
    std::fs::write(&path, to_plain_csv(&random_walk(&symbol(), CANDLES, seed))).unwrap();
    path
}

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
        store: BacktestStore::Memory,
    }
}
