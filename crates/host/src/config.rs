//! The configuration of `keel serve`: a TOML file (`--config FILE`) with `KEEL_*` environment
//! overrides. `keel config check FILE` validates a file and prints the effective configuration
//! with every secret masked.
//!
//! ```toml
//! [database]
//! url = "postgres://keel_host@127.0.0.1/keel"
//! admin_url = "postgres://keel_owner@127.0.0.1/keel"   # migrations at start (optional)
//!
//! [api]
//! listen = "127.0.0.1:8080"
//! jwt_secret = "at least 32 bytes of secret......"
//!
//! [exchange]
//! kind = "binance"
//! rest_url = "http://127.0.0.1:9000"
//! ws_url = "ws://127.0.0.1:9000"
//! api_key = "key"
//! api_secret = "secret"
//!
//! [strategy]
//! plugin = "plugins-example/target/wasm32-wasip2/release/sma_cross.wasm"
//! symbols = ["BTCUSDT"]
//! ```
//!
//! Every key of every section can be overridden from the environment as
//! `KEEL_<SECTION>_<KEY>` in upper case (`KEEL_DATABASE_URL`, `KEEL_API_JWT_SECRET`,
//! `KEEL_INSTANCE_LEASE_TTL_MS`, ...), and `KEEL_JWT_SECRET` is accepted for `api.jwt_secret`
//! (the variable `keel token` reads). docs/configuration.md lists them all.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use keel_kernel::exchange::Interval;
use keel_kernel::lock::{LOCK_TTL_MS_MAX, LOCK_TTL_MS_MIN};
use serde::{Deserialize, Serialize};

/// What a masked secret prints as.
pub const MASK: &str = "********";
/// The shortest JWT secret accepted (as `JwtKeys::new` requires).
pub const JWT_SECRET_MIN_BYTES: usize = keel_api::auth::SECRET_MIN_BYTES;
/// The largest request body or upload limit accepted: 256 MiB.
pub const BODY_LIMIT_BYTES_MAX: u64 = 256 << 20;
/// The most profiles one instance may be configured to run.
pub const PROFILES_PER_INSTANCE_MAX: usize = 100_000;
/// The longest interval between loop iterations or passes the configuration accepts: one hour.
pub const INTERVAL_MS_MAX: u64 = 3_600_000;
/// The most candles `engine.warm_up_candles_max` may keep per profile.
pub const WARM_UP_CANDLES_MAX: usize = 100_000;

/// A secret: never printed, never logged. `Debug`, `Display` and `Serialize` show [`MASK`].
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// A database URL: its password, if it has one, is a secret.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by [`MASK`].
    pub fn masked(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                // Only fails for URLs that cannot have a password, and this one has one.
                let _ = url.set_password(Some(MASK));
                url.to_string()
            }
            _ => self.0.clone(),
        }
    }

    fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// The whole configuration of one `keel serve` instance.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store lives.
    pub database: DatabaseConfig,
    /// The HTTP server.
    pub api: ApiConfig,
    /// The exchange the profiles trade on.
    pub exchange: ExchangeConfig,
    /// This instance among several on one database.
    #[serde(default)]
    pub instance: InstanceConfig,
    /// Timing of the per-profile loops.
    #[serde(default)]
    pub loops: LoopsConfig,
    /// Host-wide switches.
    #[serde(default)]
    pub host: HostConfig,
    /// What one user may store and how fast they may call the API.
    #[serde(default)]
    pub quotas: keel_api::Quotas,
    /// Tunables of every profile's engine (the kernel's `EngineConfig`).
    #[serde(default)]
    pub engine: keel_kernel::engine::EngineConfig,
    /// The strategy every profile runs.
    pub strategy: StrategyConfig,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…` as the host role, or `sqlite:PATH` (one instance only).
    pub url: DatabaseUrl,
    /// `postgres://…` as the owner role: when set, migrations are applied at start.
    pub admin_url: Option<DatabaseUrl>,
    /// Most connections to PostgreSQL.
    #[serde(default = "default_connections_max")]
    pub connections_max: u32,
}

fn default_connections_max() -> u32 {
    keel_kernel::store::PG_CONNECTIONS_MAX_DEFAULT
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The address the HTTP server binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The HS256 secret API tokens are verified with.
    pub jwt_secret: Secret,
    /// Largest request body, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: u64,
    /// Largest plugin upload, in bytes.
    #[serde(default = "default_upload_limit")]
    pub upload_limit_bytes: u64,
    /// Serve `/metrics`' per-profile families (profile ids and their free capital) without an
    /// operator's token: only for a listener that no tenant reaches.
    #[serde(default)]
    pub metrics_profile_labels: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl ApiConfig {
    /// The API's body limits (validated to fit in memory: at most `BODY_LIMIT_BYTES_MAX`).
    pub fn body_limits(&self) -> keel_api::BodyLimits {
        let bytes = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        keel_api::BodyLimits {
            json_bytes: bytes(self.body_limit_bytes),
            upload_bytes: bytes(self.upload_limit_bytes),
        }
    }
}

fn default_body_limit() -> u64 {
    keel_api::JSON_BODY_BYTES_DEFAULT as u64
}

fn default_upload_limit() -> u64 {
    keel_api::PLUGIN_UPLOAD_BYTES_DEFAULT as u64
}

/// `[exchange]`: `kind = "binance"` (Binance USDⓈ-M Futures or any compatible server, such as
/// `keel exchange-sim`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExchangeConfig {
    /// The Binance adapter.
    Binance {
        /// REST base URL, such as `https://fapi.binance.com`.
        rest_url: String,
        /// WebSocket base URL, such as `wss://fstream.binance.com`.
        ws_url: String,
        /// The API key.
        api_key: Secret,
        /// The HMAC secret of that key.
        api_secret: Secret,
    },
}

/// `[instance]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// A name for logs and health (default: host name and process id).
    pub id: Option<String>,
    /// TTL of a profile lease, by the database clock: a dead instance's profiles move after this.
    pub lease_ttl_ms: i64,
    /// How often leases are renewed and the directory is read for profiles to take.
    pub lease_renew_ms: u64,
    /// Most profiles this instance runs at once.
    pub profiles_max: usize,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            id: None,
            lease_ttl_ms: 15_000,
            lease_renew_ms: 5_000,
            profiles_max: 1_000,
        }
    }
}

impl InstanceConfig {
    /// The configured id, or `HOSTNAME-PID`.
    pub fn id_or_default(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "keel".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// `[loops]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopsConfig {
    /// Time between reconciliation passes.
    pub reconcile_interval_ms: u64,
    /// Stall threshold of the trading loop.
    pub trading_stall_ms: u64,
    /// Stall threshold of the monitor loop.
    pub monitor_stall_ms: u64,
    /// Stall threshold of the reconciliation loop.
    pub reconciliation_stall_ms: u64,
}

impl Default for LoopsConfig {
    fn default() -> Self {
        LoopsConfig {
            reconcile_interval_ms: 5_000,
            trading_stall_ms: 180_000,
            monitor_stall_ms: 10_000,
            reconciliation_stall_ms: 30_000,
        }
    }
}

impl LoopsConfig {
    /// The loops' timing.
    pub fn loop_config(&self) -> keel_api::health::LoopConfig {
        keel_api::health::LoopConfig {
            reconcile_interval_ms: self.reconcile_interval_ms,
            trading_stall_ms: self.trading_stall_ms,
            monitor_stall_ms: self.monitor_stall_ms,
            reconciliation_stall_ms: self.reconciliation_stall_ms,
        }
    }
}

/// `[host]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// The host-wide kill switch at start: no new entries on any profile.
    pub kill_switch: bool,
}

/// `[strategy]`: the plugin every profile in the directory runs, until per-profile bindings
/// exist.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    /// The component file (`.wasm`).
    pub plugin: PathBuf,
    /// The symbols the profiles trade (their candle streams and the risk rules' allow list).
    pub symbols: Vec<String>,
    /// Candle width: `1s`, `1m`, `5m`, `15m`, `1h`, `4h` or `1d`.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Config pairs handed to the plugin's `init`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_interval() -> String {
    "1m".to_owned()
}

impl StrategyConfig {
    /// The candle interval.
    pub fn interval(&self) -> anyhow::Result<Interval> {
        Interval::ALL
            .into_iter()
            .find(|i| i.as_str() == self.interval)
            .with_context(|| {
                let known: Vec<&str> = Interval::ALL.iter().map(|i| i.as_str()).collect();
                format!(
                    "strategy.interval: {:?} is not one of {}",
                    self.interval,
                    known.join(", ")
                )
            })
    }
}

/// The environment variables that override keys, as (variable, section, key). Every key of
/// every section is `KEEL_<SECTION>_<KEY>`; aliases follow.
const ENV_ALIASES: [(&str, &str, &str); 1] = [("KEEL_JWT_SECRET", "api", "jwt_secret")];

/// The environment variable that overrides `section.key`.
fn env_name(section: &str, key: &str) -> String {
    format!("KEEL_{}_{}", section, key).to_ascii_uppercase()
}

/// Every (section, key) a configuration may hold, for the environment overrides.
const KEYS: [(&str, &[&str]); 9] = [
    ("database", &["url", "admin_url", "connections_max"]),
    (
        "api",
        &[
            "listen",
            "jwt_secret",
            "body_limit_bytes",
            "upload_limit_bytes",
            "metrics_profile_labels",
        ],
    ),
    (
        "exchange",
        &["kind", "rest_url", "ws_url", "api_key", "api_secret"],
    ),
    (
        "instance",
        &["id", "lease_ttl_ms", "lease_renew_ms", "profiles_max"],
    ),
    (
        "loops",
        &[
            "reconcile_interval_ms",
            "trading_stall_ms",
            "monitor_stall_ms",
            "reconciliation_stall_ms",
        ],
    ),
    ("host", &["kill_switch"]),
    (
        "quotas",
        &[
            "profiles_per_user_max",
            "running_profiles_per_user_max",
            "plugins_per_user_max",
            "plugin_bytes_per_user_max",
            "requests_per_second_max",
            "request_burst_max",
        ],
    ),
    (
        "engine",
        &[
            "entry_lock_ttl_ms",
            "unknown_resolve_after_ms",
            "entry_retry_budget_ms",
            "slippage_reserve_bps",
            "intents_per_call_max",
            "refusals_kept_max",
            "fee_reserve_bps",
            "warm_up_candles_max",
        ],
    ),
    ("strategy", &["plugin", "interval"]),
];

/// Every override variable with the key it sets, for docs and `keel config check`.
pub fn env_variables() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = KEYS
        .iter()
        .flat_map(|(section, keys)| {
            keys.iter()
                .map(move |key| (env_name(section, key), format!("{section}.{key}")))
        })
        .collect();
    out.extend(
        ENV_ALIASES
            .iter()
            .map(|(var, section, key)| ((*var).to_owned(), format!("{section}.{key}"))),
    );
    out
}

impl Config {
    /// Reads `path`, applies the `KEEL_*` variables of `env`, and validates the result. Errors
    /// name the file, the key and what is wrong.
    pub fn load(path: &Path, env: &[(String, String)]) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        Config::parse(&text, &path.display().to_string(), env)
    }

    /// Like [`Config::load`] with the process environment.
    pub fn load_with_process_env(path: &Path) -> anyhow::Result<Config> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("KEEL_"))
            .collect();
        Config::load(path, &env)
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, env: &[(String, String)]) -> anyhow::Result<Config> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        let applied = apply_env(&mut table, env)?;
        // Without overrides the file itself is parsed, so errors point at its lines; with them,
        // the merged document is, and the error says which variables it holds.
        let (source, origin) = if applied.is_empty() {
            (text.to_owned(), origin.to_owned())
        } else {
            let merged = toml::to_string(&table).context("merging the KEEL_* overrides")?;
            (merged, format!("{origin} with {}", applied.join(", ")))
        };
        let config: Config =
            toml::from_str(&source).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(config)
    }

    /// Checks what types alone cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), String> {
        let db = &self.database;
        let is_pg = db.url.is_postgres();
        if !is_pg && !db.url.expose().starts_with("sqlite:") {
            return Err(format!(
                "database.url: {:?} is neither postgres://… nor sqlite:PATH",
                db.url.masked()
            ));
        }
        let admin_is_pg = db
            .admin_url
            .as_ref()
            .map(|admin| is_pg && admin.is_postgres());
        if admin_is_pg == Some(false) {
            return Err(
                "database.admin_url: only a PostgreSQL store has an owner role; \
                        SQLite is migrated on open"
                    .to_owned(),
            );
        }
        if db.connections_max == 0 || db.connections_max > 1_000 {
            return Err("database.connections_max: must be 1 to 1000".to_owned());
        }
        let secret_len = self.api.jwt_secret.expose().len();
        if secret_len < JWT_SECRET_MIN_BYTES {
            return Err(format!(
                "api.jwt_secret: {secret_len} bytes; at least {JWT_SECRET_MIN_BYTES} are required"
            ));
        }
        if let Some(why) = placeholder(self.api.jwt_secret.expose()) {
            return Err(format!(
                "api.jwt_secret: {why}: set a random one, e.g. KEEL_JWT_SECRET=$(openssl rand -hex 32)"
            ));
        }
        for (key, value) in [
            ("api.body_limit_bytes", self.api.body_limit_bytes),
            ("api.upload_limit_bytes", self.api.upload_limit_bytes),
        ] {
            if value == 0 || value > BODY_LIMIT_BYTES_MAX {
                return Err(format!("{key}: must be 1 to {BODY_LIMIT_BYTES_MAX}"));
            }
        }
        let ExchangeConfig::Binance {
            rest_url, ws_url, ..
        } = &self.exchange;
        self.quotas.validate().map_err(|e| format!("quotas.{e}"))?;
        check_url("exchange.rest_url", rest_url, &["http", "https"])?;
        check_url("exchange.ws_url", ws_url, &["ws", "wss"])?;
        self.instance.validate()?;
        let loops = &self.loops;
        for (key, value) in [
            ("loops.reconcile_interval_ms", loops.reconcile_interval_ms),
            ("loops.trading_stall_ms", loops.trading_stall_ms),
            ("loops.monitor_stall_ms", loops.monitor_stall_ms),
            (
                "loops.reconciliation_stall_ms",
                loops.reconciliation_stall_ms,
            ),
        ] {
            if !(100..=INTERVAL_MS_MAX).contains(&value) {
                return Err(format!("{key}: {value} is outside 100..={INTERVAL_MS_MAX}"));
            }
        }
        check_engine(&self.engine)?;
        self.strategy.validate()
    }
}

/// Words that mark a secret someone was meant to replace.
const PLACEHOLDER_WORDS: [&str; 8] = [
    "replace",
    "change-me",
    "change_me",
    "changeme",
    "placeholder",
    "example",
    "your-",
    "xxxx",
];

/// Fewest distinct bytes a secret must hold: `aaaa…` or `0000…` is no secret.
const SECRET_DISTINCT_BYTES_MIN: usize = 8;

/// Why `secret` looks like a placeholder rather than a secret, if it does.
fn placeholder(secret: &str) -> Option<String> {
    let lower = secret.to_ascii_lowercase();
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| lower.contains(*w)) {
        return Some(format!("a placeholder (it contains {word:?})"));
    }
    let distinct: std::collections::HashSet<u8> = secret.bytes().collect();
    (distinct.len() < SECRET_DISTINCT_BYTES_MIN).then(|| {
        format!(
            "{} distinct bytes, at least {SECRET_DISTINCT_BYTES_MIN} are required",
            distinct.len()
        )
    })
}

fn check_engine(engine: &keel_kernel::engine::EngineConfig) -> Result<(), String> {
    if !(LOCK_TTL_MS_MIN..=LOCK_TTL_MS_MAX).contains(&engine.entry_lock_ttl_ms) {
        return Err(format!(
            "engine.entry_lock_ttl_ms: {} is outside {LOCK_TTL_MS_MIN}..={LOCK_TTL_MS_MAX}",
            engine.entry_lock_ttl_ms
        ));
    }
    // An order unknown to the exchange is declared never placed only after every request that
    // could still place it has expired (the adapter's recvWindow).
    let unknown_min_ms = keel_exchange::binance::RECV_WINDOW_MS as i64;
    if engine.unknown_resolve_after_ms <= unknown_min_ms {
        return Err(format!(
            "engine.unknown_resolve_after_ms: {} must exceed the exchange's recvWindow ({unknown_min_ms} ms)",
            engine.unknown_resolve_after_ms
        ));
    }
    // The engine caps it at half of the entry lock's TTL (a waiting entry holds its lock).
    if engine.entry_retry_budget_ms < 0 {
        return Err(format!(
            "engine.entry_retry_budget_ms: {} is negative",
            engine.entry_retry_budget_ms
        ));
    }
    if engine.warm_up_candles_max > WARM_UP_CANDLES_MAX {
        return Err(format!(
            "engine.warm_up_candles_max: {} is more than {WARM_UP_CANDLES_MAX}",
            engine.warm_up_candles_max
        ));
    }
    if engine.intents_per_call_max == 0 || engine.refusals_kept_max == 0 {
        return Err(
            "engine.intents_per_call_max and engine.refusals_kept_max: must be positive".to_owned(),
        );
    }
    Ok(())
}

impl InstanceConfig {
    fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.id {
            let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "instance.id: {id:?} must be 1 to 64 printable ASCII characters"
                ));
            }
        }
        if !(LOCK_TTL_MS_MIN..=LOCK_TTL_MS_MAX).contains(&self.lease_ttl_ms) {
            return Err(format!(
                "instance.lease_ttl_ms: {} is outside {LOCK_TTL_MS_MIN}..={LOCK_TTL_MS_MAX}",
                self.lease_ttl_ms
            ));
        }
        // Renewing at most every third of the TTL leaves two chances before the lease expires.
        if self.lease_renew_ms == 0 || self.lease_renew_ms as i64 * 3 > self.lease_ttl_ms {
            return Err(format!(
                "instance.lease_renew_ms: {} must be positive and at most a third of \
                 instance.lease_ttl_ms ({})",
                self.lease_renew_ms, self.lease_ttl_ms
            ));
        }
        if self.profiles_max == 0 || self.profiles_max > PROFILES_PER_INSTANCE_MAX {
            return Err(format!(
                "instance.profiles_max: must be 1 to {PROFILES_PER_INSTANCE_MAX}"
            ));
        }
        Ok(())
    }
}

impl StrategyConfig {
    fn validate(&self) -> Result<(), String> {
        if self.symbols.is_empty() {
            return Err("strategy.symbols: at least one symbol is required".to_owned());
        }
        for symbol in &self.symbols {
            keel_kernel::ids::Symbol::new(symbol)
                .map_err(|e| format!("strategy.symbols: {symbol:?}: {e}"))?;
        }
        self.interval().map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn check_url(key: &str, text: &str, schemes: &[&str]) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("{key}: {text:?} is not a URL ({e})"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "{key}: the scheme of {text:?} must be one of {}",
            schemes.join(", ")
        ));
    }
    Ok(())
}

/// Sets every key named by a `KEEL_*` variable; returns the variables applied.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> anyhow::Result<Vec<String>> {
    let known: BTreeMap<String, String> = env_variables().into_iter().collect();
    let mut applied = Vec::new();
    for (var, value) in env {
        let Some(path) = known.get(var) else {
            continue;
        };
        let (section, key) = path.split_once('.').expect("paths are section.key");
        let entry = table
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            anyhow::bail!("{section} must be a table to take {var}");
        };
        section_table.insert(key.to_owned(), env_value(key, value));
        applied.push(var.clone());
    }
    Ok(applied)
}

/// A variable's value as the key's type: integers for `*_ms`, `*_bytes`, `*_max` and `*_bps` keys, a
/// boolean for `kill_switch` and `metrics_profile_labels`, a string otherwise. A value that does not parse stays a string, so
/// the error names the key and the expected type.
fn env_value(key: &str, text: &str) -> toml::Value {
    let integer = key.ends_with("_ms")
        || key.ends_with("_bytes")
        || key.ends_with("_max")
        || key.ends_with("_bps");
    match (
        integer,
        key == "kill_switch" || key == "metrics_profile_labels",
    ) {
        (true, _) => text.parse::<i64>().map_or_else(
            |_| toml::Value::String(text.to_owned()),
            toml::Value::Integer,
        ),
        (_, true) => text.parse::<bool>().map_or_else(
            |_| toml::Value::String(text.to_owned()),
            toml::Value::Boolean,
        ),
        _ => toml::Value::String(text.to_owned()),
    }
}

/// The effective configuration as TOML, every secret masked.
pub fn render_masked(config: &Config) -> anyhow::Result<String> {
    toml::to_string_pretty(config).context("rendering the configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[database]
url = "postgres://keel_host:hunter2@127.0.0.1/keel"
[api]
jwt_secret = "0123456789abcdef0123456789abcdef"
[exchange]
kind = "binance"
rest_url = "http://127.0.0.1:9000"
ws_url = "ws://127.0.0.1:9000"
api_key = "the-key"
api_secret = "the-secret"
[strategy]
plugin = "sma_cross.wasm"
symbols = ["BTCUSDT"]
"#;

    #[test]
    fn secrets_never_print() {
        let config = Config::parse(GOOD, "good.toml", &[]).unwrap();
        let shown = format!("{config:?}\n{}", render_masked(&config).unwrap());
        for secret in ["hunter2", "0123456789abcdef", "the-key", "the-secret"] {
            assert!(!shown.contains(secret), "{secret} printed in {shown}");
        }
        assert!(shown.contains(MASK));
    }

    #[test]
    fn quotas_have_defaults_are_overridden_and_checked() {
        let config = Config::parse(GOOD, "good.toml", &[]).unwrap();
        assert_eq!(config.quotas, keel_api::Quotas::default());
        let text = format!("{GOOD}\n[quotas]\nprofiles_per_user_max = 5\n");
        let env = vec![(
            "KEEL_QUOTAS_REQUESTS_PER_SECOND_MAX".to_owned(),
            "3".to_owned(),
        )];
        let quotas = Config::parse(&text, "good.toml", &env).unwrap().quotas;
        assert_eq!(quotas.profiles_per_user_max, 5);
        assert_eq!(quotas.requests_per_second_max, 3);
        assert_eq!(quotas.plugins_per_user_max, 100);
        for (key, value, says) in [
            ("profiles_per_user_max", "0", "quotas.profiles_per_user_max"),
            (
                "running_profiles_per_user_max",
                "0",
                "quotas.running_profiles_per_user_max",
            ),
            (
                "plugins_per_user_max",
                "1001",
                "quotas.plugins_per_user_max",
            ),
            (
                "plugin_bytes_per_user_max",
                "0",
                "quotas.plugin_bytes_per_user_max",
            ),
            (
                "requests_per_second_max",
                "0",
                "quotas.requests_per_second_max",
            ),
            ("request_burst_max", "0", "quotas.request_burst_max"),
        ] {
            let text = format!("{GOOD}\n[quotas]\n{key} = {value}\n");
            let error = Config::parse(&text, "bad.toml", &[])
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{key} = {value}: {error}");
        }
    }

    #[test]
    fn the_example_states_the_default_quotas() {
        let example = include_str!("../../../deploy/keel.example.toml");
        let env = vec![("KEEL_JWT_SECRET".to_owned(), "zyxwvutsrq".repeat(4))];
        let config = Config::parse(example, "keel.example.toml", &env).unwrap();
        assert_eq!(config.quotas, keel_api::Quotas::default());
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            ("KEEL_DATABASE_URL".to_owned(), "sqlite:x.db".to_owned()),
            ("KEEL_INSTANCE_LEASE_TTL_MS".to_owned(), "9000".to_owned()),
            ("KEEL_INSTANCE_LEASE_RENEW_MS".to_owned(), "3000".to_owned()),
            ("KEEL_JWT_SECRET".to_owned(), "zyxwvutsrq".repeat(4)),
        ];
        let config = Config::parse(GOOD, "good.toml", &env).unwrap();
        assert_eq!(config.database.url.expose(), "sqlite:x.db");
        assert_eq!(config.instance.lease_ttl_ms, 9000);
        assert_eq!(config.api.jwt_secret.expose(), "zyxwvutsrq".repeat(4));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = GOOD.replace("[api]", "[api]\nlisten_addr = \"x\"");
        let error = Config::parse(&text, "bad.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("bad.toml"), "{error}");
        assert!(error.contains("listen_addr"), "{error}");
        assert!(error.contains("line 5"), "{error}");
    }

    #[test]
    fn bad_relations_name_the_key() {
        let text = format!("{GOOD}\n[instance]\nlease_ttl_ms = 1000\nlease_renew_ms = 900\n");
        let error = Config::parse(&text, "bad.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("instance.lease_renew_ms"), "{error}");
        let short = GOOD.replace("0123456789abcdef0123456789abcdef", "short");
        let error = Config::parse(&short, "bad.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("api.jwt_secret"), "{error}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let text = GOOD.replace("[api]", "[api]\nbody_limit_bytes = \"big\"");
        let error = Config::parse(&text, "bad.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("bad.toml"), "{error}");
        assert!(error.contains("invalid type"), "{error}");
    }
}
