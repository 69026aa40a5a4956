//! `keel`: the command line of the Keel trading host.

mod cli;
mod logging;

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Err(error) = logging::init(cli.log_level_default()) {
        eprintln!("keel: {error:#}");
        return std::process::ExitCode::from(2);
    }
    cli::run(cli).await
}
