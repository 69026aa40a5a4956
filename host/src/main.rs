//! `keel`: the command line of the Keel trading host.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    keel_host::cli::run(keel_host::cli::Cli::parse()).await
}
