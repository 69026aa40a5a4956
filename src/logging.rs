//! The process's log: `tracing` events on stderr, one JSON object per line in production and
//! readable lines in a terminal.
//!
//! The format is JSON when stderr is not a terminal (a container, a service manager, a pipe) or
//! when `KEEL_LOG_FORMAT=json`; readable text when stderr is a terminal or `KEEL_LOG_FORMAT=text`.
//! `RUST_LOG` filters with the `env-filter` syntax; unset, the command chooses the level
//! ([`crate::cli::Cli::log_level_default`]). docs/operations.md
//! describes the JSON fields and the spans that carry `profile_id`, `user_id`,
//! `client_order_id` and `plugin_sha256`.
//!
//! Secrets never reach the log: every type that holds one (the exchange signer, the JWT keys,
//! the simulator's keys, the CLI arguments that take a secret) prints it as `..` in its `Debug`.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// The environment variable that forces a log format.
pub const LOG_FORMAT_ENV: &str = "KEEL_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Readable lines with colours, for a person at a terminal.
    Text,
}

impl LogFormat {
    /// The format `KEEL_LOG_FORMAT` asks for (`json` or `text`), or, when it is unset or empty,
    /// the one that suits stderr.
    pub fn choose(requested: Option<&str>, stderr_is_terminal: bool) -> anyhow::Result<Self> {
        match requested.map(str::trim) {
            Some("json") => Ok(LogFormat::Json),
            Some("text") => Ok(LogFormat::Text),
            None | Some("") if stderr_is_terminal => Ok(LogFormat::Text),
            None | Some("") => Ok(LogFormat::Json),
            Some(other) => {
                anyhow::bail!("{LOG_FORMAT_ENV} must be `json` or `text`, not {other:?}")
            }
        }
    }
}

/// Installs the process-wide subscriber, at `level_default` unless `RUST_LOG` says otherwise.
/// Call once, first thing in `main`; a bad `KEEL_LOG_FORMAT` or `RUST_LOG` is an error that
/// names the variable.
pub fn init(level_default: LevelFilter) -> anyhow::Result<()> {
    let requested = std::env::var(LOG_FORMAT_ENV).ok();
    let format = LogFormat::choose(requested.as_deref(), std::io::stderr().is_terminal())?;
    let filter = EnvFilter::builder()
        .with_default_directive(level_default.into())
        .from_env()
        .context("RUST_LOG is not a valid filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            // Every enclosing span under `spans`, outermost first, each once: a line inside an
            // order operation names the order and the profile. (`span`, a second copy of the
            // innermost one, is left out.)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.with_ansi(true).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_exchange::binance::{BinanceConfig, Signer};
    use keel_exchange_sim::{SimConfig, SimKey};

    /// The `Debug` of every type holding a secret, next to the secret's printable forms.
    #[test]
    fn no_debug_output_contains_a_secret() {
        let hmac_secret = "hmac-secret-3f9a1c77e2";
        let key_bytes = [0x5a_u8; 32];
        let ed25519 = ed25519_dalek::SigningKey::from_bytes(&key_bytes);
        let jwt_secret = "jwt-secret-of-enough-bytes-9d2e4b61a8c0";
        let hmac = Signer::Hmac {
            secret: hmac_secret.to_owned(),
        };
        let config = BinanceConfig::testnet("api-key-b7d3e901".to_owned(), hmac.clone());
        let mut sim = SimConfig::new(1);
        sim.keys.insert(
            "k".to_owned(),
            SimKey::Hmac {
                secret: hmac_secret.to_owned(),
            },
        );
        let printed = [
            format!("{hmac:?}"),
            format!("{config:?}"),
            format!(
                "{:?}",
                Signer::Ed25519 {
                    key: Box::new(ed25519)
                }
            ),
            format!(
                "{:?}",
                keel_api::auth::JwtKeys::new(jwt_secret.as_bytes()).unwrap()
            ),
            format!("{sim:?}"),
        ];
        let forbidden = [
            hmac_secret.to_owned(),
            jwt_secret.to_owned(),
            hex::encode(key_bytes),
            format!("{key_bytes:?}"),
            "api-key-b7d3e901".to_owned(),
        ];
        for text in &printed {
            for secret in &forbidden {
                assert!(!text.contains(secret.as_str()), "{secret} in {text}");
            }
        }
        assert!(printed[1].contains("..e901"), "{}", printed[1]);
    }

    #[test]
    fn the_format_follows_the_variable_then_the_terminal() {
        assert_eq!(
            LogFormat::choose(Some("json"), true).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            LogFormat::choose(Some("text"), false).unwrap(),
            LogFormat::Text
        );
        assert_eq!(LogFormat::choose(None, true).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::choose(None, false).unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::choose(Some(""), false).unwrap(), LogFormat::Json);
        let error = LogFormat::choose(Some("yaml"), false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "KEEL_LOG_FORMAT must be `json` or `text`, not \"yaml\""
        );
    }
}
