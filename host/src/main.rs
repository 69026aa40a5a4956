//! `keel`: the command line of the Keel trading host.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    keel_host::cli::run(keel_host::cli::Cli::parse())
}
