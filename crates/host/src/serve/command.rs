//! `keel serve --config FILE`: the host in production — PostgreSQL (several instances) or SQLite
//! (one), a real exchange adapter, the profiles of the directory shared out by lease
//! ([`super::cluster`]), and the operational endpoints.
//!
//! Start: the configuration is validated, migrations are applied when `database.admin_url` is
//! set, the strategy plugin is compiled once, and the instance starts taking profiles; each runs
//! restart recovery before its first decision. SIGTERM or Ctrl-C: the HTTP server stops
//! accepting, each profile finishes its current step, and every lease is released so other
//! instances take the profiles at once rather than after the TTL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_kernel::engine::{CandleHistory, Clock as _, EngineConfig, HostSwitches, SystemClock};
use keel_kernel::exchange::{Exchange, Interval};
use keel_kernel::ids::{ProfileId, Symbol};
use keel_kernel::lock::OwnerToken;
use keel_kernel::store::{DirectoryEntry, HOST_ACCOUNT, SealedCredentials, Store, owner_account};
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::assemble::{Host, HostSetup, ProfileBuilder, ProfileParts, ProfilePlugin};
use crate::config::{Config, ExchangeConfig};
use keel_api::{BINANCE_USDM, ControlChange, CredentialsKey, ProfileControl as _};
use keel_exchange::binance::{BinanceConfig, BinanceExchange, Signer};
use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_kernel::money::Amount;
use keel_runtime::{InstanceSetup, PluginDigest, PluginVersion};

use super::ProfileLoops;
use super::cluster::{Cluster, ClusterConfig, ProfileStarter, Refreshed};
use super::control::RunningPlugin;
use super::stored::{BoundPlugin, StoredProfile, stored_profile};
use crate::paper::restored_paper;

/// Audits the accounts the running profiles trade on every `interval` until `stop` turns true
/// (see [`Starter::audit_accounts`]).
async fn audit_accounts_every(
    starter: Arc<Starter>,
    store: Store,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopped = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.wait_for(|stopped| *stopped) => true,
        };
        if stopped {
            return;
        }
        starter.audit_accounts(&store).await;
    }
}

/// The asset the capital ledger counts in, and the one whose wallet balance an account audit
/// compares with the allocations.
const MARGIN_ASSET: &str = "USDT";

/// Candles queued per profile before its stream waits.
pub const CANDLE_QUEUE_MAX: usize = 64;

/// `keel serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file (TOML); `KEEL_*` variables override its keys.
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs one instance until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load_with_process_env(&args.config)?;
    refuse_unknown_crash_point()?;
    let instance = config.instance.id_or_default();
    let store = open_store(&config).await?;
    let auth = keel_api::auth::JwtKeys::new(config.api.jwt_secret.expose().as_bytes())
        .context("api.jwt_secret")?;
    let exchange = connect_exchange(&config.exchange).await?;
    let loop_config = config.loops.loop_config();
    let credentials = credentials_key()?;
    let mut host = Host::new(HostSetup {
        name: "keel serve",
        store: store.clone(),
        loop_config,
        kill_switch: config.host.kill_switch,
        // Not ready until the first look at the directory says how many profiles must recover.
        profiles_expected: usize::MAX,
        auth,
        credentials: credentials.clone(),
        limits: config.api.body_limits(),
        quotas: config.quotas,
        profile_labels_public: config.api.metrics_profile_labels,
    })?;
    let starter = Arc::new(Starter::new(
        &config,
        exchange,
        credentials,
        host.profiles().clone(),
    )?);
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding api.listen {}", config.api.listen))?;
    let address = listener.local_addr()?;
    let owner = OwnerToken::new_random();
    let cluster = Cluster::new(
        store.clone(),
        owner,
        ClusterConfig {
            lease_ttl_ms: config.instance.lease_ttl_ms,
            lease_renew_ms: config.instance.lease_renew_ms,
            profiles_max: config.instance.profiles_max,
            running_per_user_max: config.quotas.running_profiles_per_user_max,
        },
        loop_config,
        starter.clone(),
        host.metrics().clone(),
        host.health().clone(),
    );
    host.spawn_beside(
        "account audit",
        audit_accounts_every(
            starter,
            store,
            Duration::from_millis(config.loops.reconcile_interval_ms),
            host.stopping(),
        ),
    );
    let stopping = host.stopping();
    // One line on stdout, so scripts and tests can find the address.
    println!(
        "keel serve: instance {instance} (owner {}) listening on http://{address}",
        owner.as_uuid()
    );
    tracing::info!(%instance, owner = %owner.as_uuid(), %address, "serving");
    host.run(listener, cluster.run(stopping)).await
}

/// The key exchange credentials are sealed with: `KEEL_CREDENTIALS_KEY` (64 hex digits).
/// A crash point (`KEEL_CRASH_POINT`, see `keel_kernel::crash`) must name one that exists, and
/// only a lab build has them: a misspelt or useless arming is refused at start.
fn refuse_unknown_crash_point() -> anyhow::Result<()> {
    const ENV: &str = "KEEL_CRASH_POINT";
    let Ok(point) = std::env::var(ENV) else {
        return Ok(());
    };
    #[cfg(feature = "lab")]
    {
        debug_assert_eq!(ENV, keel_kernel::crash::ENV);
        anyhow::ensure!(
            keel_kernel::crash::is_valid(&point),
            "{ENV} = {point:?} names no crash point; known: {}",
            keel_kernel::crash::ALL.join(", ")
        );
        tracing::warn!(%point, "a crash point is armed: this process will abort there");
        Ok(())
    }
    #[cfg(not(feature = "lab"))]
    anyhow::bail!("{ENV} = {point:?}: this build has no crash points (they need the `lab` feature)")
}

fn credentials_key() -> anyhow::Result<keel_api::CredentialsKey> {
    keel_api::CredentialsKey::from_env()?.context(
        "KEEL_CREDENTIALS_KEY is not set: keel serve seals exchange credentials with it \
         (64 hex digits, e.g. from `openssl rand -hex 32`)",
    )
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let db = &config.database;
    if let Some(admin) = &db.admin_url {
        Store::migrate_postgres(admin.expose())
            .await
            .with_context(|| format!("applying migrations as {}", admin.masked()))?;
    }
    let url = db.url.expose();
    let store = if url.starts_with("sqlite:") {
        Store::open(url).await
    } else {
        Store::connect_postgres(url, db.connections_max).await
    };
    store.with_context(|| format!("opening database.url {}", db.url.masked()))
}

/// The first wait after a failed connection to the exchange at start.
const CONNECT_BACKOFF_MIN_MS: u64 = 500;
/// The longest wait between two connection attempts at start.
const CONNECT_BACKOFF_MAX_MS: u64 = 30_000;

/// Connects to the exchange, trying again with a backoff for as long as it takes: an exchange
/// that is down, slow or rate-limiting at start delays the host (which answers nothing, so a
/// load balancer's readiness probe fails), and never ends it. Each failure is logged with its
/// cause.
async fn connect_exchange(config: &ExchangeConfig) -> anyhow::Result<Arc<dyn Exchange>> {
    let mut wait_ms = CONNECT_BACKOFF_MIN_MS;
    let mut attempt: u32 = 1;
    loop {
        match connect_exchange_once(config).await {
            Ok(exchange) => {
                if attempt > 1 {
                    tracing::info!(attempt, "connected to the exchange");
                }
                return Ok(exchange);
            }
            Err(error) => {
                tracing::warn!(
                    attempt,
                    wait_ms,
                    error = format!("{error:#}"),
                    "the exchange is not reachable yet; trying again"
                );
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                wait_ms = (wait_ms * 2).min(CONNECT_BACKOFF_MAX_MS);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

async fn connect_exchange_once(config: &ExchangeConfig) -> anyhow::Result<Arc<dyn Exchange>> {
    match config {
        ExchangeConfig::Binance {
            rest_url,
            ws_url,
            api_key,
            api_secret,
        } => {
            let signer = Signer::Hmac {
                secret: api_secret.expose().to_owned(),
            };
            let binance = BinanceConfig::at(rest_url, ws_url, api_key.expose().to_owned(), signer);
            let exchange = BinanceExchange::connect(binance)
                .await
                .with_context(|| format!("connecting to the exchange at {rest_url}"))?;
            Ok(Arc::new(exchange))
        }
    }
}

/// Builds each profile's engine: the configured plugin, the exchange, the candle streams.
struct Starter {
    /// What every profile's loops are built with: the plugin engine, the loop control (the
    /// API's pause, resume, kill and hot-load), the host switches, the live bus.
    profiles: ProfileBuilder,
    version: PluginVersion,
    engine: EngineConfig,
    plugin_config: Vec<(String, String)>,
    symbols: Vec<Symbol>,
    interval: Interval,
    exchange: Arc<dyn Exchange>,
    owner: OwnerToken,
    /// The plugin's file name, as the dashboard shows it.
    plugin_name: String,
    /// Recent candles of the configured symbols, shared by every profile engine of this host.
    history: Arc<CandleHistory>,
    /// Held while the history is filled from the exchange.
    seeding: tokio::sync::Mutex<()>,
    /// Where the exchange is: a profile with its owner's credentials trades there on its own
    /// account.
    exchange_config: ExchangeConfig,
    /// Opens the owners' sealed credentials.
    credentials: CredentialsKey,
    /// The account each running profile was started on.
    accounts: std::sync::Mutex<std::collections::HashMap<ProfileId, Account>>,
    /// The real exchange accounts the running profiles trade on, by name in claims, with the
    /// profiles on each: what the account audit reads.
    audited: std::sync::Mutex<std::collections::HashMap<String, AuditedAccount>>,
}

/// A real exchange account some running profiles of this instance trade on.
struct AuditedAccount {
    exchange: Arc<dyn Exchange>,
    profiles: std::collections::BTreeSet<ProfileId>,
}

impl Starter {
    fn new(
        config: &Config,
        exchange: Arc<dyn Exchange>,
        credentials: CredentialsKey,
        profiles: ProfileBuilder,
    ) -> anyhow::Result<Starter> {
        let strategy = &config.strategy;
        let bytes = std::fs::read(&strategy.plugin)
            .with_context(|| format!("reading strategy.plugin {}", strategy.plugin.display()))?;
        let version = profiles
            .plugins()
            .load(&bytes)
            .with_context(|| format!("loading strategy.plugin {}", strategy.plugin.display()))?;
        let symbols = strategy
            .symbols
            .iter()
            .map(|s| Symbol::new(s))
            .collect::<Result<Vec<_>, _>>()
            .context("strategy.symbols")?;
        let plugin_name = strategy
            .plugin
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Starter {
            profiles,
            version,
            engine: config.engine.clone(),
            plugin_config: strategy.config.clone().into_iter().collect(),
            symbols,
            interval: strategy.interval()?,
            exchange,
            plugin_name,
            history: Arc::new(CandleHistory::new(config.engine.warm_up_candles_max)),
            exchange_config: config.exchange.clone(),
            credentials,
            accounts: Default::default(),
            audited: Default::default(),
            seeding: tokio::sync::Mutex::new(()),
            // One owner per instance: its entry locks, like its profile leases, are its own.
            owner: OwnerToken::new_random(),
        })
    }

    /// The plugin the owner bound, else the configured one.
    async fn wanted_plugin(&self, binding: Option<BoundPlugin>) -> anyhow::Result<ProfilePlugin> {
        let configured = async {
            Ok(ProfilePlugin {
                version: self.version.clone(),
                config: self.plugin_config.clone(),
                name: self.plugin_name.clone(),
            })
        };
        self.profiles.bound_or(binding, configured).await
    }

    /// Fills the host's candle history from the exchange's recent candles, which an engine
    /// replays into its new strategy instance before its first live decision. A symbol whose
    /// history is live (its newest candle at most two intervals old: running profiles are fed it)
    /// is not asked for again, so starting many profiles asks the exchange once per symbol, not
    /// once per profile. The caller subscribed to the live candles first, so none falls between
    /// the two (the history skips the ones it gets twice). Without them the strategy starts
    /// blind, which is logged, not fatal.
    async fn seed_recent_candles(&self, profile: ProfileId) {
        let limit = self.engine.warm_up_candles_max;
        if limit == 0 {
            return;
        }
        // One start seeds at a time: the others then find the history live.
        let _seeding = self.seeding.lock().await;
        let live_after_ms = SystemClock.now_ms() - 2 * self.interval.as_ms();
        for symbol in &self.symbols {
            if self
                .history
                .latest_open_ms(symbol)
                .is_some_and(|open_ms| open_ms >= live_after_ms)
            {
                continue;
            }
            match self
                .exchange
                .recent_candles(symbol, self.interval, limit)
                .await
            {
                Ok(candles) => self.history.extend(candles),
                Err(e) => tracing::warn!(
                    profile_id = %profile, %symbol, error = %e,
                    "warm-up skipped: the exchange's recent candles could not be read"
                ),
            }
        }
    }

    /// The exchange account a profile trades on, with its paper account when it is one (see
    /// [`Account`]). Credentials that do not open, or are for another exchange, stop the profile
    /// from starting: it never falls back to another account.
    async fn account(
        &self,
        entry: &DirectoryEntry,
        stored: &StoredProfile,
        store: &Store,
    ) -> anyhow::Result<Trading> {
        let trading = match (&stored.credentials, stored.host_account) {
            (Some(sealed), _) => {
                let (exchange, account) = self.owner_account(entry, sealed).await?;
                Trading {
                    exchange,
                    paper: None,
                    account: Some(account),
                }
            }
            (None, true) => {
                tracing::info!(profile_id = %entry.profile, "trading on the host's exchange account, as an operator assigned");
                Trading {
                    exchange: self.exchange.clone(),
                    paper: None,
                    account: Some(HOST_ACCOUNT.to_owned()),
                }
            }
            (None, false) => {
                let paper = self.paper_account(entry, store).await?;
                tracing::info!(profile_id = %entry.profile, "trading on a paper account: no credentials of its owner, no assignment of the host's account");
                Trading {
                    exchange: paper.clone(),
                    paper: Some(paper),
                    account: None,
                }
            }
        };
        let account = trading.account.as_deref();
        if let Some(symbol) = store
            .claim_account(entry.profile, account, &self.symbols)
            .await?
        {
            anyhow::bail!(
                "profile {} cannot trade {symbol} on its exchange account: another running profile \
                 trades it there, and an account holds one position per symbol (one profile per \
                 account and symbol); it starts once that profile stops or moves",
                entry.profile
            );
        }
        if let Some(account) = &trading.account {
            self.audited
                .lock()
                .expect("lock poisoned")
                .entry(account.clone())
                .or_insert_with(|| AuditedAccount {
                    exchange: trading.exchange.clone(),
                    profiles: Default::default(),
                })
                .profiles
                .insert(entry.profile);
        }
        Ok(trading)
    }

    /// One account audit: for each real account a running profile trades on, its wallet
    /// balance (USDT) read and recorded, the capital of the profiles claiming it (allocated
    /// plus realized PnL: fees and realized gains move both) summed, and the shortfall exported
    /// and logged.
    async fn audit_accounts(&self, store: &Store) {
        let accounts: Vec<(String, Arc<dyn Exchange>)> = self
            .audited
            .lock()
            .expect("lock poisoned")
            .iter()
            .map(|(name, audited)| (name.clone(), audited.exchange.clone()))
            .collect();
        let mut largest = rust_decimal::Decimal::ZERO;
        for (account, exchange) in accounts {
            match self.audit_account(store, &account, exchange.as_ref()).await {
                Ok(shortfall) => largest = largest.max(shortfall),
                Err(error) => {
                    tracing::warn!(%account, error = %format!("{error:#}"), "account audit failed");
                }
            }
        }
        let largest = rust_decimal::prelude::ToPrimitive::to_f64(&largest).unwrap_or(f64::MAX);
        self.profiles
            .metrics()
            .account_allocation_shortfall_quote
            .set(largest);
    }

    /// The shortfall of one account (zero when its balance covers its profiles' capital).
    async fn audit_account(
        &self,
        store: &Store,
        account: &str,
        exchange: &dyn Exchange,
    ) -> anyhow::Result<rust_decimal::Decimal> {
        let balances = exchange.balances().await.context("reading the balances")?;
        let balance = balances
            .iter()
            .find(|b| b.asset == MARGIN_ASSET)
            .map_or(rust_decimal::Decimal::ZERO, |b| b.wallet_balance.get());
        store.record_account_balance(account, balance).await?;
        let capital = store.account_capital(account).await?;
        let shortfall = (capital - balance).max(rust_decimal::Decimal::ZERO);
        if !shortfall.is_zero() {
            tracing::warn!(%account, %capital, %balance, %shortfall, "the capital of the profiles on an exchange account exceeds its balance");
        }
        Ok(shortfall)
    }

    /// A paper account of the configured symbols, restored from the store, holding the
    /// profile's allocated capital.
    async fn paper_account(
        &self,
        entry: &DirectoryEntry,
        store: &Store,
    ) -> anyhow::Result<Arc<PaperExchange>> {
        let mut rules = Vec::with_capacity(self.symbols.len());
        for symbol in &self.symbols {
            rules.push(
                self.exchange
                    .symbol_rules(symbol)
                    .await
                    .with_context(|| format!("reading the exchange's rules of {symbol}"))?,
            );
        }
        let capital = store.tenant(entry.user).capital(entry.profile).await?;
        let config = PaperConfig {
            // Partial fills are off: the seed only names the account's history.
            seed: entry.profile.as_uuid().as_u64_pair().0,
            initial_balance: Amount::new(capital.allocated.get())
                .unwrap_or(PaperConfig::default().initial_balance),
            ..PaperConfig::default()
        };
        restored_paper(
            store,
            entry.user,
            entry.profile,
            config,
            rules,
            SystemClock.now_ms(),
        )
        .await
    }

    /// The owner's account at the configured exchange, with its own connection, user-data
    /// stream and rate limits.
    async fn owner_account(
        &self,
        entry: &DirectoryEntry,
        sealed: &SealedCredentials,
    ) -> anyhow::Result<(Arc<dyn Exchange>, String)> {
        let profile = entry.profile;
        anyhow::ensure!(
            sealed.exchange == BINANCE_USDM,
            "profile {profile}'s credentials are for {:?}; keel serve trades on {BINANCE_USDM}",
            sealed.exchange
        );
        let secret = self.credentials.open(profile, entry.user, sealed)?;
        let ExchangeConfig::Binance {
            rest_url, ws_url, ..
        } = &self.exchange_config;
        let signer = Signer::Hmac {
            secret: secret.api_secret,
        };
        let account = owner_account(&secret.api_key);
        let binance = BinanceConfig::at(rest_url, ws_url, secret.api_key, signer);
        let exchange = BinanceExchange::connect(binance)
            .await
            .with_context(|| format!("connecting profile {profile}'s account at {rest_url}"))?;
        tracing::info!(profile_id = %profile, "trading on the owner's exchange account");
        Ok((Arc::new(exchange), account))
    }

    /// One channel of every configured symbol's closed candles, from the host's exchange. A
    /// paper account sees each candle first (its orders fill on it), then the profile does.
    async fn candles(
        &self,
        paper: Option<Arc<PaperExchange>>,
    ) -> anyhow::Result<mpsc::Receiver<keel_kernel::market::Candle>> {
        let (tx, rx) = mpsc::channel(CANDLE_QUEUE_MAX);
        for symbol in &self.symbols {
            let mut stream = self
                .exchange
                .candles(symbol, self.interval)
                .await
                .with_context(|| format!("subscribing to {symbol} candles"))?;
            let tx = tx.clone();
            let paper = paper.clone();
            // Ends when the profile's loops drop their receiver, which ends the stream too.
            tokio::spawn(async move {
                while let Some(candle) = stream.recv().await {
                    if let Some(paper) = &paper
                        && let Err(e) = paper.feed_candle(&candle).await
                    {
                        tracing::debug!(symbol = %candle.symbol, error = %e, "the paper account skipped a candle");
                    }
                    if tx.send(candle).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(rx)
    }
}

#[async_trait::async_trait]
impl ProfileStarter for Starter {
    fn switches(&self) -> &HostSwitches {
        self.profiles.switches()
    }

    fn account_changes(&self) -> mpsc::UnboundedReceiver<ProfileId> {
        self.profiles.control().account_changes()
    }

    fn stopped(&self, profile: ProfileId) {
        self.accounts
            .lock()
            .expect("lock poisoned")
            .remove(&profile);
        self.audited.lock().expect("lock poisoned").retain(|_, on| {
            on.profiles.remove(&profile);
            !on.profiles.is_empty()
        });
        self.profiles.control().forget(profile);
    }

    async fn start(&self, entry: DirectoryEntry, store: Store) -> anyhow::Result<ProfileLoops> {
        let mut stored = stored_profile(&store, entry.user, entry.profile).await?;
        let Trading {
            exchange, paper, ..
        } = self.account(&entry, &stored, &store).await?;
        self.accounts
            .lock()
            .expect("lock poisoned")
            .insert(entry.profile, Account::of(&stored));
        let plugin = self.wanted_plugin(stored.binding.take()).await?;
        let events = exchange
            .user_events()
            .await
            .context("subscribing to the exchange's user events")?;
        let candles = self.candles(paper).await?;
        self.seed_recent_candles(entry.profile).await;
        Ok(self.profiles.loops(ProfileParts {
            profile: entry.profile,
            user: entry.user,
            name: entry.profile.to_string(),
            symbols: self.symbols.clone(),
            limits: stored.row.risk_limits,
            paused: stored.row.paused,
            killed: stored.row.killed,
            plugin,
            engine: self.engine.clone(),
            store,
            exchange,
            clock: Arc::new(SystemClock),
            owner: self.owner,
            history: Some(self.history.clone()),
            candles,
            events,
        }))
    }

    async fn refresh(&self, entry: DirectoryEntry, store: &Store) -> anyhow::Result<Refreshed> {
        let profile = entry.profile;
        let mut stored = stored_profile(store, entry.user, profile).await?;
        let started_with = self
            .accounts
            .lock()
            .expect("lock poisoned")
            .get(&profile)
            .cloned();
        if started_with != Some(Account::of(&stored)) {
            // The account is fixed for the life of the loops: start them again on the new one.
            return Ok(Refreshed::Restart);
        }
        let mut changes = vec![
            ControlChange::Paused(stored.row.paused),
            ControlChange::Killed(stored.row.killed),
        ];
        changes.extend(stored.row.risk_limits.take().map(ControlChange::Limits));
        if stored.quarantine_clear_requested {
            // Recorded through another instance: the loop runs a pass for it.
            changes.push(ControlChange::QuarantineClearRequested);
        }
        for change in changes {
            if !self.profiles.control().apply(profile, change) {
                anyhow::bail!("profile {profile} does not run here any more");
            }
        }
        // Compared before anything is compiled: a binding made through this instance's API is
        // already running (the API swapped it in), and needs no second compile.
        let binding = stored.binding.take();
        let wanted = match &binding {
            Some(bound) => RunningPlugin {
                digest: PluginDigest::of(&bound.wasm),
                config: bound.config.clone().into(),
            },
            None => RunningPlugin {
                digest: self.version.digest().clone(),
                config: self.plugin_config.clone().into(),
            },
        };
        if self.profiles.control().running(profile).as_ref() == Some(&wanted) {
            return Ok(Refreshed::Applied);
        }
        let ProfilePlugin {
            version,
            config,
            name,
        } = self.wanted_plugin(binding).await?;
        let clock = self
            .profiles
            .control()
            .clock(profile)
            .with_context(|| format!("profile {profile} does not run here any more"))?;
        let setup = InstanceSetup::new(profile, clock)
            .config(config)
            .name(name.as_str());
        let plugins = self.profiles.plugins().clone();
        let prepared =
            tokio::task::spawn_blocking(move || plugins.prepare_replacement(&version, setup))
                .await
                .context("the plugin instantiation task")?
                .map_err(|fault| anyhow::anyhow!("starting plugin {name:?}: {fault}"))?;
        if !self.profiles.control().offer_strategy(profile, prepared) {
            anyhow::bail!("profile {profile} does not run here any more");
        }
        tracing::info!(profile_id = %profile, plugin = %name, "bound plugin queued for a hot-swap");
        Ok(Refreshed::Applied)
    }
}

/// What a profile trades on: the exchange, its paper account when it is one, and the account's
/// name in claims (none for paper).
struct Trading {
    exchange: Arc<dyn Exchange>,
    paper: Option<Arc<PaperExchange>>,
    account: Option<String>,
}

/// The exchange account a profile trades on: its owner's, when the owner stored credentials for
/// it; the host's own, when an operator assigned it; else a paper account, filled on the host's
/// candles. A change of either restarts the profile on the account it names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Account {
    /// The owner's credentials, told apart by the nonce of their sealing (new with every seal).
    Owner(Vec<u8>),
    /// The host's configured account.
    Host,
    /// A paper account.
    Paper,
}

impl Account {
    fn of(stored: &StoredProfile) -> Account {
        match (&stored.credentials, stored.host_account) {
            (Some(sealed), _) => Account::Owner(sealed.nonce.clone()),
            (None, true) => Account::Host,
            (None, false) => Account::Paper,
        }
    }
}
