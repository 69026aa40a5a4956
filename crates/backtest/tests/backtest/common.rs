//! Paths of the example plugins, generated candles and candle files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use keel_backtest::cli::BacktestArgs;
use keel_backtest::run::{BacktestSpec, BacktestStore, load_inputs};
use keel_backtest::synthetic::random_walk;
use keel_kernel::ids::Symbol;
use keel_kernel::market::Candle;
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

/// `keel backtest`'s arguments for `plugin` over `candles`, every option at its default.
pub fn args(plugin: &str, candles: &Path) -> BacktestArgs {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: BacktestArgs,
    }
    let plugin = plugin_path(plugin);
    Command::parse_from([
        "backtest",
        "--plugin",
        plugin.to_str().unwrap(),
        "--candles",
        candles.to_str().unwrap(),
    ])
    .args
}

/// `candles` as a CSV with `header`, each time written by `time` and the prices after it.
pub fn write_csv(
    dir: &Path,
    name: &str,
    header: &str,
    candles: &[Candle],
    time: impl Fn(&Candle) -> String,
) -> PathBuf {
    let mut text = format!("{header}\n");
    for c in candles {
        let _ = writeln!(
            text,
            "{},{},{},{},{},{}",
            time(c),
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume
        );
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `count` generated candles one day apart, from 2004-08-19.
pub fn daily_candles(count: usize, seed: u64) -> Vec<Candle> {
    const DAY_MS: i64 = 86_400_000;
    const START_MS: i64 = 1_092_873_600_000;
    random_walk(&symbol(), count, seed)
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.open_time_ms = START_MS + i as i64 * DAY_MS;
            c.close_time_ms = c.open_time_ms + DAY_MS;
            c
        })
        .collect()
}
