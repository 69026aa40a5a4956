//! `keel`: the command line of the Keel trading host.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keel", version, about = "Keel trading host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Applies the database migrations (PostgreSQL as the owner role, or a SQLite file).
    Migrate(keel_host::cli::migrate::MigrateArgs),
    /// Runs a benchmark and prints its figures.
    #[command(subcommand)]
    Bench(keel_host::bench::BenchCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Migrate(args) => keel_host::cli::migrate::run(args).await,
        Command::Bench(command) => keel_host::bench::run(command).await,
    }
}
