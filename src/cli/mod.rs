//! The `keel` command line: one module per command family.

pub mod migrate;
pub mod plugin;
pub mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "lab")]
use keel_lab::bench::BenchCommand;

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
    /// Measure Keel's speed and print the figures (a build with the `lab` feature).
    #[cfg(feature = "lab")]
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Apply the database migrations (PostgreSQL as the owner role, or a SQLite file).
    Migrate(migrate::MigrateArgs),
    /// Run a plugin over recorded candles through the whole kernel path with paper fills.
    Backtest(keel_backtest::cli::BacktestArgs),
    /// Serve a Binance USDⓈ-M Futures compatible simulator with fault injection.
    ExchangeSim(keel_exchange_sim::cli::ExchangeSimArgs),
    /// Run the whole host locally: SQLite, the paper exchange over a synthetic market, three
    /// example profiles, and /metrics, /internal/health, /livez, /readyz on 127.0.0.1.
    Demo(keel_host::demo::DemoArgs),
    /// Run the kernel in process under seeded faults and check every invariant after each step.
    #[cfg(feature = "lab")]
    Simulate(keel_lab::simulate::SimulateArgs),
    /// Run the host from a configuration file: profiles shared by lease with other instances on
    /// the same PostgreSQL database, restart recovery, /metrics and /internal/health.
    Serve(keel_host::serve::command::ServeArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Mint an HS256 API token (the shape Supabase issues) for local use.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user id the token speaks for (a UUID).
    #[arg(long)]
    sub: keel_kernel::ids::UserId,
    /// Give the token the operator role (`app_metadata.keel_role = "operator"`).
    #[arg(long)]
    operator: bool,
    /// How long the token is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: i64,
    /// The HS256 secret the host verifies tokens with.
    #[arg(long, env = "KEEL_JWT_SECRET", hide_env_values = true)]
    secret: String,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Validates a configuration file with the `KEEL_*` overrides of the environment and prints
    /// the effective configuration, every secret masked.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
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
        /// The compile's wall-clock budget, in ms (the host's default unless given).
        #[arg(long)]
        compile_ms_max: Option<u64>,
        /// The compile's address space, in bytes (the host's default unless given).
        #[arg(long)]
        compile_memory_bytes_max: Option<u64>,
    },
    /// Compiles a plugin under resource limits for a parent `keel` process (internal).
    #[command(hide = true)]
    CompileWorker {
        /// The component to compile.
        #[arg(long)]
        input: PathBuf,
        /// Where the compiled artifact is written.
        #[arg(long)]
        output: PathBuf,
        /// The address space the compile may use (`RLIMIT_AS`), in bytes.
        #[arg(long)]
        memory_bytes_max: u64,
        /// The CPU time the compile may use (`RLIMIT_CPU`), in seconds.
        #[arg(long)]
        cpu_seconds_max: u64,
    },
    /// Creates a plugin crate that builds into a component and passes `keel plugin check`.
    New {
        /// The crate's name: lowercase letters, digits and '-'.
        name: String,
        /// The directory the crate is created in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("TokenArgs")
            .field("sub", &self.sub)
            .field("operator", &self.operator)
            .field("ttl_secs", &self.ttl_secs)
            .field("secret", &"..")
            .finish()
    }
}

/// Whether the command compiles untrusted plugins (an upload, a bound plugin, a file to check):
/// those compile in a child process under resource limits. The benchmarks and the simulation
/// compile the example plugins in process.
fn compiles_plugins_in_a_child(command: &Command) -> bool {
    matches!(
        command,
        Command::Serve(_)
            | Command::Demo(_)
            | Command::Backtest(_)
            | Command::Plugin {
                command: PluginCommand::Check { .. }
            }
    )
}

impl Cli {
    /// The log level when `RUST_LOG` is unset: `info` for the long-running commands (the host
    /// and the exchange simulator), `warn` for one-shot tools, whose results go to stdout.
    pub fn log_level_default(&self) -> tracing::level_filters::LevelFilter {
        match self.command {
            Command::Demo(_) | Command::ExchangeSim(_) => tracing::level_filters::LevelFilter::INFO,
            _ => tracing::level_filters::LevelFilter::WARN,
        }
    }
}

/// Runs a parsed command line; the exit code says whether it succeeded.
pub async fn run(cli: Cli) -> ExitCode {
    if compiles_plugins_in_a_child(&cli.command) {
        match std::env::current_exe() {
            Ok(program) => keel_runtime::compile::set_worker_program(program),
            Err(error) => {
                eprintln!("keel: finding this program to compile plugins with: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let outcome = match cli.command {
        Command::Plugin {
            command:
                PluginCommand::CompileWorker {
                    input,
                    output,
                    memory_bytes_max,
                    cpu_seconds_max,
                },
        } => {
            let limits = keel_runtime::compile::WorkerLimits {
                memory_bytes_max,
                cpu_seconds_max,
            };
            // The parent reads the error output as the reason: no prefix.
            return match keel_runtime::compile::run_worker(&input, &output, limits) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("{error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    json,
                    compile_ms_max,
                    compile_memory_bytes_max,
                },
        } => {
            let mut compile = keel_runtime::CompileLimits::default();
            compile.compile_ms_max = compile_ms_max.unwrap_or(compile.compile_ms_max);
            compile.compile_memory_bytes_max =
                compile_memory_bytes_max.unwrap_or(compile.compile_memory_bytes_max);
            plugin::check(&file, &config, json, compile)
        }
        Command::Plugin {
            command: PluginCommand::New { name, dir },
        } => scaffold::new_plugin(&name, &dir).map(|root| {
            println!("created {}", root.display());
            println!(
                "build it with: cd {} && cargo build --target wasm32-wasip2 --release",
                root.display()
            );
            ExitCode::SUCCESS
        }),
        #[cfg(feature = "lab")]
        Command::Bench { command } => keel_lab::bench::run(command).await,
        Command::Backtest(args) => keel_backtest::cli::run(args).await,
        Command::Migrate(args) => migrate::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::ExchangeSim(args) => keel_exchange_sim::cli::run(args)
            .await
            .map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "lab")]
        Command::Simulate(args) => keel_lab::simulate::run(args).await,
        Command::Serve(args) => keel_host::serve::command::run(args)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => keel_host::config::Config::load_with_process_env(&file)
            .and_then(|config| keel_host::config::render_masked(&config))
            .map(|text| {
                println!(
                    "# {}: valid; effective configuration, secrets masked",
                    file.display()
                );
                print!("{text}");
                ExitCode::SUCCESS
            }),
        Command::Demo(args) => keel_host::demo::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Token(args) => keel_api::auth::JwtKeys::new(args.secret.as_bytes()).map(|keys| {
            let now = chrono::Utc::now().timestamp();
            println!("{}", keys.mint(args.sub, args.operator, now, args.ttl_secs));
            ExitCode::SUCCESS
        }),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keel: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_that_take_a_secret_never_print_it() {
        use clap::Parser as _;
        let secret = "a-secret-of-enough-bytes-0123456789";
        let token = Cli::parse_from([
            "keel",
            "token",
            "--sub",
            "00000000-0000-0000-0000-000000000001",
            "--secret",
            secret,
        ]);
        let sim = Cli::parse_from(["keel", "exchange-sim", "--api-secret", secret]);
        for (cli, args) in [(token, "TokenArgs"), (sim, "ExchangeSimArgs")] {
            let printed = format!("{cli:?}");
            assert!(printed.contains(args), "{printed}");
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
