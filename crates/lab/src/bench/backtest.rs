//! `keel bench backtest`: candles per second of a whole backtest of sma-cross.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use keel_kernel::ids::Symbol;
use rust_decimal::Decimal;
use serde_json::json;

use keel_backtest::run::{BacktestSpec, BacktestStore, load_inputs, run_backtest};
use keel_backtest::synthetic::random_walk;

/// Arguments of `keel bench backtest`.
#[derive(Debug, clap::Args)]
pub struct BacktestBenchArgs {
    /// How many generated one-minute candles the backtest runs over.
    #[arg(long, default_value_t = 1_000_000)]
    pub candles: usize,
    /// Where the example plugins were built.
    #[arg(long, default_value = "plugins-example/target/wasm32-wasip2/release")]
    pub plugins_dir: PathBuf,
    /// Where the backtest's kernel store lives.
    #[arg(long, value_enum, default_value_t = BacktestStore::Memory)]
    pub store: BacktestStore,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs sma-cross over generated candles through the whole path (plugin load and compile, the
/// profile engine, SQLite store, paper exchange, report) and prints candles per second.
pub async fn run(args: BacktestBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.candles > 0, "--candles must be positive");
    let plugin = args.plugins_dir.join("sma_cross.wasm");
    let (bytes, name) = load_inputs(&plugin).with_context(|| {
        format!(
            "{}: build the plugins with scripts/build-plugins",
            plugin.display()
        )
    })?;
    let symbol = Symbol::new("BTCUSDT").expect("valid");
    let spec = BacktestSpec {
        plugin: bytes,
        plugin_name: name,
        candles: random_walk(&symbol, args.candles, 1),
        symbol,
        config: Vec::new(),
        capital: Decimal::from(10_000),
        fee_bps: Decimal::from(4),
        store: args.store,
        seed: 1,
    };
    let started = Instant::now();
    let report = run_backtest(&spec, false).await?;
    let seconds = started.elapsed().as_secs_f64();
    let candles_per_sec = args.candles as f64 / seconds;
    if args.json {
        let out = json!({
            "bench": "backtest",
            "plugin": "sma-cross",
            "candles": args.candles,
            "store": format!("{:?}", args.store).to_lowercase(),
            "trades": report.summary.trades,
            "seconds": seconds,
            "candles_per_sec": candles_per_sec,
        });
        println!("{out}");
    } else {
        println!(
            "backtest sma-cross ({:?} store): {} candles, {} trades in {seconds:.3} s: {candles_per_sec:.0} candles/s",
            args.store, args.candles, report.summary.trades
        );
    }
    Ok(())
}
