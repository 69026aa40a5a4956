//! The `keel` command line: one module per command family.

mod bench;
mod plugin;

use std::path::PathBuf;
use std::process::ExitCode;

/// Keel, a trading host with a fixed safety kernel.
#[derive(Debug, clap::Parser)]
#[command(name = "keel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Work with strategy plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Measure Keel's speed.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PluginCommand {
    /// Validates a plugin exactly as the host loads it: compile, link, instantiate, `init`.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// A config pair handed to `init`, as `key=value` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
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
}

/// Runs a parsed command line; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Plugin {
            command: PluginCommand::Check { file, config, json },
        } => plugin::check(&file, &config, json),
        Command::Bench {
            command:
                BenchCommand::Plugin {
                    json,
                    instances,
                    plugins_dir,
                },
        } => bench::plugin(&plugins_dir, instances, json),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keel: {error:#}");
            ExitCode::FAILURE
        }
    }
}
