//! `keel exchange-sim`: the command-line front of the simulator.

use anyhow::Context;
use tokio::net::TcpListener;

use keel_kernel::money::Amount;

use super::{Faults, SimConfig, SimKey, serve};

/// Arguments of `keel exchange-sim`.
#[derive(clap::Args)]
pub struct ExchangeSimArgs {
    /// The port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The address to bind. The admin endpoint has no authentication: keep this local.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Seeds the synthetic market and the fault draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Faults at start, as `key=value,...` or JSON, e.g. `unknown_rate=0.1,latency_ms=50`.
    #[arg(long, default_value = "")]
    pub faults: String,
    /// The width of one synthetic candle, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub candle_ms: u64,
    /// Replay this candle file (one JSON candle per line) instead of the random walk.
    #[arg(long)]
    pub candles_file: Option<std::path::PathBuf>,
    /// The accepted API key.
    #[arg(long, env = "KEEL_SIM_API_KEY", default_value = SimConfig::DEFAULT_API_KEY)]
    pub api_key: String,
    /// The HMAC secret of that key.
    #[arg(long, env = "KEEL_SIM_API_SECRET", default_value = SimConfig::DEFAULT_API_SECRET)]
    pub api_secret: String,
    /// One more accepted API key and its HMAC secret, as `KEY:SECRET` (repeatable): the keys of
    /// profiles that trade with their owners' credentials.
    #[arg(long = "key", value_name = "KEY:SECRET")]
    pub keys: Vec<String>,
    /// An accepted API key with an account of its own (balances, positions, orders, user
    /// stream), as `KEY:SECRET` or `KEY:SECRET:BALANCE` (repeatable). Keys given with
    /// `--api-key` and `--key` trade on the main account.
    #[arg(long = "account", value_name = "KEY:SECRET[:BALANCE]")]
    pub accounts: Vec<String>,
    /// A file of accounts, one `KEY:SECRET` or `KEY:SECRET:BALANCE` per line as `--account`
    /// takes them (blank lines and lines starting with `#` are skipped): keys stay out of the
    /// process list.
    #[arg(long, value_name = "PATH")]
    pub accounts_file: Option<std::path::PathBuf>,
    /// The main account's starting balance, in the quote asset (USDT).
    #[arg(long, default_value = "10000")]
    pub balance: rust_decimal::Decimal,
}

impl std::fmt::Debug for ExchangeSimArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeSimArgs")
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("seed", &self.seed)
            .field("faults", &self.faults)
            .field("candle_ms", &self.candle_ms)
            .field("candles_file", &self.candles_file)
            .field("api_key", &self.api_key)
            // The secrets never reach a log.
            .field("api_secret", &"..")
            .field("keys", &self.keys.len())
            .field("accounts", &self.accounts.len())
            .field("accounts_file", &self.accounts_file)
            .field("balance", &self.balance)
            .finish()
    }
}

/// Runs the simulator until the process is stopped.
pub async fn run(args: ExchangeSimArgs) -> anyhow::Result<()> {
    let faults = Faults::parse(&args.faults).map_err(anyhow::Error::msg)?;
    let mut config = SimConfig::new(args.seed);
    config.faults = faults;
    config.candle_ms = args.candle_ms;
    config.keys = [(
        args.api_key,
        SimKey::Hmac {
            secret: args.api_secret,
        },
    )]
    .into();
    for pair in args.keys {
        let (key, secret) = pair
            .split_once(':')
            .filter(|(key, secret)| !key.is_empty() && !secret.is_empty())
            .context("--key takes KEY:SECRET, both non-empty")?;
        config.keys.insert(
            key.to_owned(),
            SimKey::Hmac {
                secret: secret.to_owned(),
            },
        );
    }
    config.paper.initial_balance = starting_balance(args.balance)?;
    let own_balance = config.paper.initial_balance;
    let mut accounts = args.accounts;
    if let Some(path) = &args.accounts_file {
        accounts.extend(read_accounts_file(path)?);
    }
    for spec in accounts {
        let (key, secret, balance) = parse_account(&spec, own_balance)?;
        config.keys.insert(key.clone(), SimKey::Hmac { secret });
        config.own_accounts.insert(key, balance);
    }
    let listener = TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.bind, args.port))?;
    let handle = serve(config, listener).await?;
    // One line on stdout, so scripts and tests can find the port.
    println!("exchange-sim listening on {}", handle.addr);
    handle.wait().await
}

fn starting_balance(value: rust_decimal::Decimal) -> anyhow::Result<Amount> {
    anyhow::ensure!(
        value >= rust_decimal::Decimal::ZERO,
        "a balance is not negative"
    );
    Amount::new(value).map_err(|e| anyhow::anyhow!("balance {value}: {e}"))
}

/// The account lines of `--accounts-file`: at most [`ACCOUNTS_FILE_BYTES_MAX`] bytes.
fn read_accounts_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("--accounts-file {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= ACCOUNTS_FILE_BYTES_MAX,
        "--accounts-file {} is {size} bytes, more than {ACCOUNTS_FILE_BYTES_MAX}",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --accounts-file {}", path.display()))?;
    Ok(account_lines(&text))
}

/// The largest `--accounts-file` read.
const ACCOUNTS_FILE_BYTES_MAX: u64 = 1 << 20;

fn account_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads `KEY:SECRET` or `KEY:SECRET:BALANCE`.
fn parse_account(spec: &str, default: Amount) -> anyhow::Result<(String, String, Amount)> {
    let mut parts = spec.splitn(3, ':');
    let (key, secret) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    anyhow::ensure!(
        !key.is_empty() && !secret.is_empty(),
        "--account takes KEY:SECRET[:BALANCE], key and secret non-empty"
    );
    let balance = match parts.next() {
        None => default,
        Some(text) => starting_balance(
            text.parse()
                .with_context(|| format!("--account {key}: balance {text:?}"))?,
        )?,
    };
    Ok((key.to_owned(), secret.to_owned(), balance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_flag_names_key_secret_and_an_optional_balance() {
        let default = Amount::new(rust_decimal::Decimal::from(7)).unwrap();
        let (key, secret, balance) = parse_account("k:s:250.5", default).unwrap();
        assert_eq!((key.as_str(), secret.as_str()), ("k", "s"));
        assert_eq!(balance.get().to_string(), "250.5");
        assert_eq!(parse_account("k:s", default).unwrap().2, default);
        assert!(parse_account("k", default).is_err());
        assert!(parse_account("k:s:-1", default).is_err());
    }

    #[test]
    fn an_accounts_file_holds_one_account_a_line_with_comments_and_blanks() {
        let lines = account_lines("# traders\n\n alice:a-secret:500 \nbob:b-secret\n");
        assert_eq!(lines, ["alice:a-secret:500", "bob:b-secret"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts");
        std::fs::write(&path, "carol:c:1\n").unwrap();
        assert_eq!(read_accounts_file(&path).unwrap(), ["carol:c:1"]);
        let missing = read_accounts_file(&dir.path().join("none")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("--accounts-file"),
            "{missing:#}"
        );
    }
}
