//! `keel backtest`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use keel_kernel::ids::Symbol;
use rust_decimal::Decimal;

use super::candles::read_candles;
use super::report::{BacktestReport, summary_table};
use super::run::{BacktestSpec, BacktestStore, load_inputs, run_backtest};
use super::sweep::{RankBy, SweepAxis, heatmap, run_sweep, sweep_table};

/// Runs a plugin over recorded candles through the whole kernel path with paper fills.
#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// The plugin component (`.wasm`).
    #[arg(long)]
    pub plugin: PathBuf,
    /// The candle file: a Binance kline dump, or a CSV whose header names a time column and
    /// open, high, low, close and volume (any case, any order: `Date,Open,High,Low,Close,Volume`
    /// as pandas writes it). Timestamps in seconds, milliseconds or microseconds since the epoch,
    /// or ISO-8601 dates and date-times.
    #[arg(long)]
    pub candles: PathBuf,
    /// The symbol the candles are of.
    #[arg(long, default_value = "BTCUSDT")]
    pub symbol: String,
    /// A config pair handed to `init`, as `key=value` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Capital allocated to the profile, in quote currency.
    #[arg(long, default_value = "10000")]
    pub capital: Decimal,
    /// Fee of every fill, in basis points of notional.
    #[arg(long, default_value = "4")]
    pub fee_bps: Decimal,
    /// Most notional one entry may have, in quote currency. Without it the equity bounds an
    /// entry (leverage 1), so positions grow with the equity.
    #[arg(long, value_name = "QUOTE")]
    pub notional_max: Option<Decimal>,
    /// Capital an entry reserves above its notional for a market order filling above the close
    /// it was sized at, in basis points (a fraction of free capital is sized so that the
    /// notional, this reserve and the fee fit).
    #[arg(long, default_value_t = 100)]
    pub slippage_reserve_bps: u32,
    /// The chance, from 0 to 1, that a fill takes only part of the remaining quantity (the rest
    /// fills on later candles).
    #[arg(long, default_value_t = 0.0)]
    pub partial_fill_probability: f64,
    /// Write the full report (summary, trades, equity curve) as JSON here.
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Where the kernel store lives: `memory` (the memory store, fastest), `sqlite` (an
    /// in-memory SQLite database with the live schema and statements), `file` (a SQLite file in a
    /// temporary directory) or `worker` (in-memory SQLite on the server's driver). The report is
    /// the same on each.
    #[arg(long, value_enum, default_value_t = BacktestStore::Memory)]
    pub store: BacktestStore,
    /// Plot price with trades and refusals marked, equity and drawdown (SVG or PNG, by
    /// extension).
    #[arg(long, value_name = "OUT.svg|OUT.png")]
    pub plot: Option<PathBuf>,
    /// Fail (exit status 1) if the kernel refused any intent of the strategy, after printing
    /// and writing the report.
    #[arg(long)]
    pub strict: bool,
    /// Seed of the plugin's randomness: the same seed replays the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sweeps a config key: `KEY=START..END:STEP` (END included) or `KEY=A,B,C` (repeatable).
    /// Every combination of the swept values runs, over the `--config` pairs; the runs are
    /// ranked, `--json` writes them all and `--plot` draws a heatmap of the first two keys.
    #[arg(long = "sweep", value_name = "KEY=VALUES")]
    pub sweep: Vec<SweepAxis>,
    /// Runs of a sweep at once (default: one per core).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// The figure a sweep ranks its runs by.
    #[arg(long, value_enum, default_value_t = RankBy::TotalReturn)]
    pub rank_by: RankBy,
}

/// Runs `keel backtest`.
pub async fn run(args: BacktestArgs) -> anyhow::Result<ExitCode> {
    let symbol = Symbol::new(&args.symbol).with_context(|| format!("--symbol {}", args.symbol))?;
    if let Some(plot) = &args.plot {
        super::plot::format_of(plot)?;
    }
    let config = keel_runtime::check::parse_config(&args.config)?;
    let (plugin, plugin_name) = load_inputs(&args.plugin)?;
    let file = read_candles(&args.candles, &symbol)?;
    let spec = BacktestSpec {
        plugin,
        plugin_name,
        candles: file.candles,
        symbol,
        config,
        capital: args.capital,
        fee_bps: args.fee_bps,
        partial_fill_probability: args.partial_fill_probability,
        store: args.store,
        seed: args.seed,
        notional_max: args.notional_max,
        slippage_reserve_bps: args.slippage_reserve_bps,
    };
    if !args.sweep.is_empty() {
        if args.strict {
            anyhow::bail!(
                "--strict judges a single run; a sweep lists each run's refusals instead"
            );
        }
        return sweep(&spec, &args);
    }
    let mut report = run_backtest(&spec, true).await?;
    report.candle_file = Some(file.info);
    print!("{}", summary_table(&report));
    if let Some(path) = &args.json {
        let bytes = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        super::plot::plot(&report, &spec.candles, path)?;
    }
    if args.strict {
        strict_verdict(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the sweep `args` asks for over `spec`, on threads of its own (each run is a backtest on
/// its worker thread's runtime).
fn sweep(spec: &BacktestSpec, args: &BacktestArgs) -> anyhow::Result<ExitCode> {
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // The command has nothing else to run meanwhile: blocking its thread on the workers is fine.
    let report = run_sweep(spec, &args.sweep, jobs, args.rank_by, true)?;
    print!("{}", sweep_table(&report));
    if let Some(path) = &args.json {
        let bytes = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        heatmap(&report, path)?;
    }
    if report.best().is_none() {
        anyhow::bail!(
            "every run of the sweep failed: the first said {:?}",
            report.rows[0].error
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Under `--strict`, an error naming how many intents were refused and the first of them.
pub fn strict_verdict(report: &BacktestReport) -> anyhow::Result<()> {
    let count = report.summary.refusals;
    let Some(first) = report.refusals.first() else {
        return Ok(());
    };
    let intents = if count == 1 { "intent" } else { "intents" };
    bail!(
        "--strict: the kernel refused {count} {intents}; the first, at {} (bar {}): {} refused \
         by {}: {}",
        first.time,
        first.bar,
        first.what(),
        first.rule,
        first.message
    )
}
