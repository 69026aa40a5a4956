//! `keel`: the command line of the Keel trading host.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = keel_host::cli::Cli::parse();
    if let Err(error) = keel_host::logging::init(cli.log_level_default()) {
        eprintln!("keel: {error:#}");
        return std::process::ExitCode::from(2);
    }
    keel_host::cli::run(cli).await
}
