//! `keel bench …`: benchmarks that print their figures (JSON with `--json`). Speed targets are
//! measured here, never asserted in tests.

pub mod ledger;

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Two-commit ENTRY lifecycles against plain single-row UPDATE transactions on PostgreSQL.
    Ledger(ledger::LedgerArgs),
}

/// Runs the chosen benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ledger(args) => ledger::run(args).await,
    }
}
