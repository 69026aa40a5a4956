//! `keel bench …`: benchmarks that print their figures (JSON with `--json`). Speed targets are
//! measured here, never asserted in tests.

pub mod backtest;
pub mod engine;
pub mod ledger;
pub mod paper;
mod plugin;

use std::path::PathBuf;
use std::process::ExitCode;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// The plugin runtime: call latency, instantiation, hot-swap and memory per instance.
    Plugin {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Live, initialised instances held for the memory measurement.
        #[arg(long, default_value_t = 1_000)]
        instances: u32,
        /// Where the example plugins were built.
        #[arg(long, default_value = "plugins-example/target/wasm32-wasip2/release")]
        plugins_dir: PathBuf,
    },
    /// Two-commit ENTRY lifecycles against plain single-row UPDATE transactions on PostgreSQL.
    Ledger(ledger::LedgerArgs),
    /// Candles per second of a whole backtest of sma-cross (kernel path, paper fills).
    Backtest(backtest::BacktestBenchArgs),
    /// Candles per second through the paper exchange.
    Paper(paper::PaperBenchArgs),
    /// The kernel's decision-to-wire latency beside a commit, fan-out of one candle to many
    /// profiles, and reconciliation of many open orders.
    Engine(engine::EngineBenchArgs),
}

/// Runs the chosen benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Plugin {
            json,
            instances,
            plugins_dir,
        } => plugin::plugin(&plugins_dir, instances, json),
        BenchCommand::Ledger(args) => ledger::run(args).await.map(|()| ExitCode::SUCCESS),
        BenchCommand::Backtest(args) => backtest::run(args).await.map(|()| ExitCode::SUCCESS),
        BenchCommand::Paper(args) => paper::run(args).await.map(|()| ExitCode::SUCCESS),
        BenchCommand::Engine(args) => engine::run(args).await.map(|()| ExitCode::SUCCESS),
    }
}

/// A memory figure of this process from `/proc/self/status`, in bytes: `VmRSS` (resident now)
/// or `VmHWM` (the most it has been resident).
pub(crate) fn proc_status_bytes(field: &str) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    Ok(kib * 1024)
}
