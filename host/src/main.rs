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
    /// Serve a Binance USDⓈ-M Futures compatible simulator with fault injection.
    ExchangeSim(keel_host::exchange::sim::cli::ExchangeSimArgs),
    /// Measure Keel's speed; prints JSON.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Candles per second through the paper exchange.
    Paper(keel_host::exchange::bench::PaperBenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::ExchangeSim(args) => keel_host::exchange::sim::cli::run(args).await,
        Command::Bench(Bench::Paper(args)) => keel_host::exchange::bench::run(args).await,
    }
}
