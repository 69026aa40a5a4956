//! `keel demo`: the whole host on one machine — a SQLite file, the paper exchange over the
//! seeded synthetic market, a demo user with three profiles running the example Wasm plugins,
//! the per-profile loops, and the operational endpoints on 127.0.0.1.
//!
//! Profiles created through the API run too: each second the demo reads the store's profile
//! directory and starts any profile not running whose risk limits allow a symbol of its market,
//! on every such symbol, with its own paper account.
//!
//! Restart: the store is the truth. Profiles and the market's clock are remembered in
//! `demo.json` beside the database; capital is allocated once. The paper accounts live only in
//! memory, so on restart each is rebuilt from the store before recovery runs: its positions,
//! its open orders (re-placed under their client order ids), and ids numbered past any the
//! store has recorded. Recovery and reconciliation then find the account they expect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_kernel::engine::{Clock as _, EngineConfig, VirtualClock};
use keel_kernel::exchange::Exchange as _;
use keel_kernel::ids::{ProfileId, Symbol, UserId};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::Candle;
use keel_kernel::money::Amount;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::assemble::{Host, HostSetup, ProfileBuilder, ProfileParts, ProfilePlugin};
use crate::paper::restored_paper;
use crate::serve::http::HealthProbe;
use crate::serve::stored::{StoredProfile, stored_profile};
use crate::serve::{Loops, ProfileLoops};
use keel_api::CredentialsKey;
use keel_api::health::{LoopConfig, LoopHealth, wall_now_ms};
use keel_exchange::paper::{PaperConfig, PaperExchange};
use keel_exchange_sim::{CandleSource, SimConfig, sim_symbols};
use keel_runtime::PluginEngine;

/// Width of one synthetic candle in virtual time.
pub const CANDLE_MS: i64 = 60_000;
/// Candles queued per profile before the market waits for it.
pub const CANDLE_QUEUE_MAX: usize = 16;
/// Capital allocated to each demo profile, in quote currency.
pub const CAPITAL_PER_PROFILE: i64 = 10_000;
/// Seed of the demo market.
pub const DEMO_SEED: u64 = 7;

/// `keel demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the SQLite file and `demo.json` live.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Port of the HTTP server on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Wall time between synthetic candles, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub speed_ms: u64,
    /// Wall time between reconciliation passes, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub reconcile_interval_ms: u64,
    /// Directory holding the example plugins the demo runs (`sma_cross.wasm`,
    /// `rsi_reversion.wasm`). Unset, the demo looks for a Keel checkout in the working directory
    /// or above it and builds the two plugins there if they are missing.
    #[arg(long, env = "KEEL_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
}

/// One demo profile: a plugin, its symbol and its settings.
struct DemoProfile {
    name: &'static str,
    plugin: &'static str,
    symbol: &'static str,
    config: &'static [(&'static str, &'static str)],
}

/// Short windows so the demo trades within its first minute.
const DEMO_PROFILES: [DemoProfile; 3] = [
    DemoProfile {
        name: "sma-btc",
        plugin: "sma_cross.wasm",
        symbol: "BTCUSDT",
        config: &[("fast", "3"), ("slow", "8"), ("size_fraction", "0.05")],
    },
    DemoProfile {
        name: "sma-eth-long-short",
        plugin: "sma_cross.wasm",
        symbol: "ETHUSDT",
        config: &[
            ("fast", "2"),
            ("slow", "5"),
            ("mode", "long-short"),
            ("size_fraction", "0.05"),
        ],
    },
    DemoProfile {
        name: "rsi-eth",
        plugin: "rsi_reversion.wasm",
        symbol: "ETHUSDT",
        config: &[
            ("period", "6"),
            ("oversold", "40"),
            ("overbought", "60"),
            ("size_fraction", "0.05"),
        ],
    },
];

/// What the demo remembers between runs, beside the database.
#[derive(Debug, Serialize, Deserialize)]
struct DemoState {
    user: UserId,
    profiles: Vec<(String, ProfileId)>,
    /// Open time of the next candle: virtual time never moves back across restarts.
    next_open_time_ms: i64,
}

const STATE_FILE: &str = "demo.json";

impl DemoState {
    fn load(dir: &Path) -> anyhow::Result<Option<DemoState>> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written to a temporary file and renamed: a crash leaves the old file or the new one.
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let db_path = args.data_dir.join("keel.db");
    let store = Store::open_sqlite(&db_path)
        .await
        .with_context(|| format!("opening {}", db_path.display()))?;
    let plugins_dir = find_plugins(args.plugins_dir.as_deref())?;
    let state = set_up_tenant(&store, &args.data_dir).await?;
    let loop_config = LoopConfig {
        reconcile_interval_ms: args.reconcile_interval_ms,
        trading_stall_ms: (args.speed_ms * 10).max(5_000),
        monitor_stall_ms: 10_000,
        reconciliation_stall_ms: (args.reconcile_interval_ms * 3).max(10_000),
    };
    let quotas = keel_api::Quotas::default();
    let mut host = Host::new(HostSetup {
        name: "keel demo",
        store: store.clone(),
        loop_config,
        // An operator's kill switch survives a restart of the demo.
        kill_switch: store.host_switches().await?.kill,
        profiles_expected: state.profiles.len(),
        auth: demo_jwt_keys(&args.data_dir)?,
        credentials: demo_credentials_key(&args.data_dir)?,
        limits: keel_api::BodyLimits::default(),
        quotas,
        // The demo listens on 127.0.0.1 only, for the person running it: its per-profile series
        // (the dashboard's free capital panel) need no token. `keel serve` keeps them for
        // operators unless `api.metrics_profile_labels` says otherwise.
        profile_labels_public: true,
    })?;
    // The paper account has no rate limits: its headroom is always whole.
    host.metrics()
        .exchange_rate_limit_headroom_ratio
        .with_label_values(&["request_weight"])
        .set(1.0);
    let demo = DemoHost {
        store,
        profiles: host.profiles().clone(),
        clock: Arc::new(VirtualClock::new(state.next_open_time_ms)),
        plugins_dir,
    };
    let mut members = Vec::new();
    let mut inputs = Vec::new();
    let mut roster = Roster::new(quotas.running_profiles_per_user_max);
    for (spec, (_, profile)) in DEMO_PROFILES.iter().zip(&state.profiles) {
        let stored = stored_profile(&demo.store, state.user, *profile)
            .await
            .with_context(|| format!("reading profile {}", spec.name))?;
        let defaults = Defaults {
            name: spec.name.to_owned(),
            plugin: spec.plugin,
            config: spec.config,
            symbols: vec![Symbol::new(spec.symbol)?],
        };
        let launched = demo.launch(defaults, stored, state.user, *profile).await?;
        inputs.push(launched.loops);
        members.push(launched.member);
        roster.running.insert(*profile);
    }
    let token = host.auth().mint(
        state.user,
        false,
        chrono::Utc::now().timestamp(),
        DEMO_TOKEN_TTL_SECS,
    );
    let market_probe = Arc::new(MarketProbe::default());
    host.add_probe(market_probe.clone());
    host.add_probe(Arc::new(PluginProbe {
        engine: demo.profiles.plugins().clone(),
        profiles: state.profiles.clone(),
    }));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let address = listener.local_addr()?;
    let loops = Loops::start(
        inputs,
        loop_config,
        host.metrics().clone(),
        host.health().clone(),
    );
    let (joining, joining_rx) = mpsc::unbounded_channel();
    let market = tokio::spawn(run_market(MarketRun {
        members,
        joining: joining_rx,
        clock: demo.clock.clone(),
        speed_ms: args.speed_ms,
        state,
        data_dir: args.data_dir.clone(),
        probe: market_probe,
        stop: host.stopping(),
    }));
    let profiles = run_profiles(ProfilesRun {
        demo,
        loops,
        market,
        roster,
        joining,
        health: host.health().clone(),
        stop: host.stopping(),
    });
    println!("keel demo: http://{address}/internal/health  (metrics at http://{address}/metrics)");
    println!(
        "keel demo: API at http://{address}/api/v1 (described at http://{address}/openapi.json)"
    );
    println!("keel demo: token of the demo user (valid 24 h): {token}");
    println!("keel demo: dashboard at http://{address}/#token={token}");
    println!(
        "keel demo: data in {}; Ctrl-C to stop",
        args.data_dir.display()
    );
    host.run(listener, profiles).await
}

/// The demo's profiles as they run: their loops, the market that feeds them, and the roster
/// that starts the profiles created since.
struct ProfilesRun {
    demo: DemoHost,
    loops: Loops,
    market: tokio::task::JoinHandle<anyhow::Result<()>>,
    roster: Roster,
    /// Profiles the roster starts join the market through it.
    joining: mpsc::UnboundedSender<MarketMember>,
    health: Arc<LoopHealth>,
    stop: watch::Receiver<bool>,
}

/// Runs the profiles, and starts new ones every [`ROSTER_INTERVAL`], until `stop` turns true;
/// then the market stops, then each profile finishes its step.
async fn run_profiles(mut run: ProfilesRun) -> anyhow::Result<()> {
    let mut roster_tick = tokio::time::interval(ROSTER_INTERVAL);
    roster_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The host only ever turns it true (a closed channel means it is gone too).
            _ = run.stop.changed() => break,
            error = run.loops.failed() => {
                // A profile's task handles every fault on its path itself; one that still
                // ended (a bug in that handling) leaves its profile stopped, never the others.
                tracing::error!(error = %format!("{error:#}"), "a profile task ended on its own: its profile stays stopped");
                run.demo.profiles.metrics().profile_faults_total.with_label_values(&["panic"]).inc();
            }
            _ = roster_tick.tick() => {
                let starting = RosterRun {
                    demo: &run.demo,
                    loops: &mut run.loops,
                    joining: &run.joining,
                    health: &run.health,
                };
                if let Err(error) = run.roster.scan(starting).await {
                    tracing::warn!(error = %format!("{error:#}"), "reading the profile directory failed");
                }
            }
        }
    }
    run.market.await.context("market task panicked")??;
    run.loops.stop().await
}

/// How often the demo looks for profiles created since it started.
const ROSTER_INTERVAL: Duration = Duration::from_secs(1);

/// Which profiles of the store run, and why the others wait.
struct Roster {
    running: std::collections::HashSet<ProfileId>,
    /// Most profiles of one user that run (`running_profiles_per_user_max`).
    running_per_user_max: usize,
    /// Profiles not started, with the reason last logged.
    waiting: std::collections::HashMap<ProfileId, String>,
    /// Profiles whose start failed, and when to try again.
    retry_at: std::collections::HashMap<ProfileId, std::time::Instant>,
}

/// How long a profile whose start failed waits before the next attempt.
const ROSTER_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a roster pass starts profiles into.
struct RosterRun<'a> {
    demo: &'a DemoHost,
    loops: &'a mut Loops,
    joining: &'a mpsc::UnboundedSender<MarketMember>,
    health: &'a LoopHealth,
}

impl Roster {
    fn new(running_per_user_max: usize) -> Roster {
        Roster {
            running: Default::default(),
            running_per_user_max,
            waiting: Default::default(),
            retry_at: Default::default(),
        }
    }

    /// Starts every profile of the store that does not run yet — created through the API, by
    /// any user — once its risk limits allow a symbol of the demo market, if it is one of its
    /// owner's oldest `running_profiles_per_user_max` (as `keel serve` shares them out).
    /// Without a bound plugin it runs the first demo profile's example plugin and settings.
    async fn scan(&mut self, run: RosterRun<'_>) -> anyhow::Result<()> {
        let directory = run.demo.store.profile_directory().await?;
        let (_, past_quota) =
            keel_api::quotas::within_running_quota(directory.clone(), self.running_per_user_max);
        let past_quota: std::collections::HashSet<ProfileId> =
            past_quota.into_iter().map(|e| e.profile).collect();
        for entry in directory {
            let retry_later = self
                .retry_at
                .get(&entry.profile)
                .is_some_and(|at| std::time::Instant::now() < *at);
            if self.running.contains(&entry.profile) || retry_later {
                continue;
            }
            let reason = if past_quota.contains(&entry.profile) {
                keel_api::quotas::running_quota_reason(self.running_per_user_max)
            } else {
                match Roster::start(&run, entry.user, entry.profile).await {
                    Ok(Some(launched)) => {
                        tracing::info!(profile_id = %entry.profile, symbols = ?launched.member.symbols, "profile started");
                        // The market ends only after the loops' owner stops: it still receives.
                        let _ = run.joining.send(launched.member);
                        run.loops.add(launched.loops);
                        self.running.insert(entry.profile);
                        self.waiting.remove(&entry.profile);
                        self.retry_at.remove(&entry.profile);
                        run.health
                            .expect_profiles(self.running.len(), run.demo.profiles.metrics());
                        continue;
                    }
                    Ok(None) => {
                        let symbols: Vec<String> =
                            market_symbols().iter().map(Symbol::to_string).collect();
                        format!(
                            "its risk limits allow none of the demo market's symbols ({})",
                            symbols.join(", ")
                        )
                    }
                    Err(error) => {
                        let at = std::time::Instant::now() + ROSTER_RETRY_AFTER;
                        self.retry_at.insert(entry.profile, at);
                        format!("{error:#}")
                    }
                }
            };
            if self.waiting.get(&entry.profile) != Some(&reason) {
                tracing::info!(profile_id = %entry.profile, %reason, "profile not started");
                self.waiting.insert(entry.profile, reason);
            }
        }
        Ok(())
    }

    /// The profile launched on every market symbol its limits allow, or `None` if they allow
    /// none.
    async fn start(
        run: &RosterRun<'_>,
        user: UserId,
        profile: ProfileId,
    ) -> anyhow::Result<Option<Launched>> {
        let stored = stored_profile(&run.demo.store, user, profile).await?;
        let allowed = stored
            .row
            .risk_limits
            .as_ref()
            .map(|limits| limits.symbols_allowed.clone())
            .unwrap_or_default();
        let symbols: Vec<Symbol> = market_symbols()
            .into_iter()
            .filter(|s| allowed.contains(s))
            .collect();
        if symbols.is_empty() {
            return Ok(None);
        }
        let example = &DEMO_PROFILES[0];
        let defaults = Defaults {
            name: stored.row.name.clone(),
            plugin: example.plugin,
            config: example.config,
            symbols,
        };
        run.demo
            .launch(defaults, stored, user, profile)
            .await
            .map(Some)
    }
}

/// The symbols the demo market makes candles for.
fn market_symbols() -> Vec<Symbol> {
    sim_symbols()
        .into_iter()
        .map(|(rules, _)| rules.symbol)
        .collect()
}

/// How long the token the demo prints stays valid.
pub const DEMO_TOKEN_TTL_SECS: i64 = 24 * 3600;

/// The demo's JWT secret: made once, kept in the data directory (mode 0600) so tokens survive
/// a restart.
fn demo_jwt_keys(dir: &Path) -> anyhow::Result<keel_api::auth::JwtKeys> {
    let path = dir.join("jwt-secret");
    let secret = read_or_make_secret(&path, || {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        hex::encode(secret)
    })?;
    keel_api::auth::JwtKeys::new(secret.as_bytes())
        .with_context(|| format!("the secret in {}", path.display()))
}

/// The secret in `path`, written there first by `make` (created mode 0600) if it is missing.
fn read_or_make_secret(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if !path.exists() {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut file, make().as_bytes())?;
    }
    let secret =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(secret.trim().to_owned())
}

/// The key the demo seals exchange credentials with: `KEEL_CREDENTIALS_KEY` when set, else one
/// made once and kept in the data directory (mode 0600).
fn demo_credentials_key(dir: &Path) -> anyhow::Result<CredentialsKey> {
    if let Some(key) = CredentialsKey::from_env()? {
        return Ok(key);
    }
    let path = dir.join("credentials-key");
    let text = read_or_make_secret(&path, CredentialsKey::generate_hex)?;
    CredentialsKey::from_hex(&text).with_context(|| format!("the key in {}", path.display()))
}

/// Where the example plugins of a checkout land, below its root.
const CHECKOUT_PLUGINS: &str = "plugins-example/target/wasm32-wasip2/release";

/// The directory the demo's plugins are read from: `--plugins-dir` (or `KEEL_PLUGINS_DIR`),
/// which must hold them; else the example plugins of the Keel checkout holding the working
/// directory, built there first if missing (only the crates the demo runs, into the checkout's
/// `plugins-example/target` whatever `CARGO_TARGET_DIR` says); else an error saying what to do.
fn find_plugins(requested: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut files: Vec<&str> = DEMO_PROFILES.iter().map(|p| p.plugin).collect();
    files.sort_unstable();
    files.dedup();
    let missing = |dir: &Path| -> Vec<&str> {
        let mut absent = files.clone();
        absent.retain(|name| !dir.join(name).is_file());
        absent
    };
    if let Some(dir) = requested {
        let absent = missing(dir);
        anyhow::ensure!(
            absent.is_empty(),
            "--plugins-dir {} holds no {}: point it at a directory with the demo's example \
             plugins (in a Keel checkout: scripts/build-plugins builds them into {CHECKOUT_PLUGINS})",
            dir.display(),
            absent.join(", ")
        );
        return Ok(dir.to_owned());
    }
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let Some(root) = cwd
        .ancestors()
        .find(|dir| dir.join("plugins-example/Cargo.toml").is_file() && dir.join("wit").is_dir())
    else {
        anyhow::bail!(
            "keel demo runs the example plugins {}, and {} is not inside a Keel checkout: pass \
             --plugins-dir DIR (or set KEEL_PLUGINS_DIR) to a directory holding them, or run \
             keel demo from a checkout, where it builds them (scripts/build-plugins builds every \
             example into {CHECKOUT_PLUGINS})",
            files.join(", "),
            cwd.display()
        );
    };
    let dir = root.join(CHECKOUT_PLUGINS);
    let absent = missing(&dir);
    if !absent.is_empty() {
        build_demo_plugins(root, &absent)?;
    }
    Ok(dir)
}

/// Builds the example plugin crates the demo runs (`sma_cross.wasm` from `sma-cross`) in the
/// checkout at `root`: about a minute the first time on two cores, then nothing.
fn build_demo_plugins(root: &Path, files: &[&str]) -> anyhow::Result<()> {
    println!(
        "keel demo: building the example plugins {} once (about a minute on two cores)",
        files.join(", ")
    );
    // The target may be missing on a fresh toolchain; without rustup the build says so itself.
    let _ = std::process::Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
    let mut cargo = std::process::Command::new("cargo");
    cargo
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("plugins-example/Cargo.toml"))
        .args(["--target", "wasm32-wasip2", "--release", "--target-dir"])
        .arg(root.join("plugins-example/target"));
    for file in files {
        let package = file.trim_end_matches(".wasm").replace('_', "-");
        cargo.args(["-p", &package]);
    }
    let status = cargo
        .status()
        .context("running cargo to build the example plugins")?;
    anyhow::ensure!(
        status.success(),
        "building the example plugins failed ({status}): see cargo's output above"
    );
    Ok(())
}

/// Finds the demo user and profiles from `demo.json`, or creates them and allocates capital
/// once. The file is written only after allocation committed.
async fn set_up_tenant(store: &Store, dir: &Path) -> anyhow::Result<DemoState> {
    if let Some(state) = DemoState::load(dir)? {
        anyhow::ensure!(
            state.profiles.len() == DEMO_PROFILES.len(),
            "{} lists {} profiles, the demo runs {}: use a fresh --data-dir",
            dir.join(STATE_FILE).display(),
            state.profiles.len(),
            DEMO_PROFILES.len()
        );
        return Ok(state);
    }
    let user = UserId::new_random();
    // The demo is its own operator: it grants its user what its profiles are allocated and room
    // for as many profiles of the user's own, made through the API.
    let budget = Decimal::from(CAPITAL_PER_PROFILE) * Decimal::from(2 * DEMO_PROFILES.len());
    store
        .operator(keel_kernel::store::HOST_OPERATOR)
        .grant_budget(user, budget)
        .await
        .context("granting the demo user's capital budget")?;
    let tenant = store.tenant(user);
    let mut profiles = Vec::new();
    for spec in &DEMO_PROFILES {
        let limits = RiskLimits::conservative([Symbol::new(spec.symbol)?]);
        let mut tx = tenant.begin().await?;
        let profile = tx.create_profile_with_limits(spec.name, &limits).await?;
        tx.commit().await?;
        tenant
            .allocate(
                profile,
                Amount::positive(Decimal::from(CAPITAL_PER_PROFILE))?,
            )
            .await
            .with_context(|| format!("allocating capital to {}", spec.name))?;
        profiles.push((spec.name.to_owned(), profile));
    }
    let minute_ms = CANDLE_MS;
    let state = DemoState {
        user,
        profiles,
        next_open_time_ms: wall_now_ms() / minute_ms * minute_ms,
    };
    state.save(dir)?;
    Ok(state)
}

/// The demo profile's paper account, restored from the store (see [`restored_paper`]).
async fn demo_paper(
    store: &Store,
    user: UserId,
    profile: ProfileId,
    first_id: i64,
) -> anyhow::Result<Arc<PaperExchange>> {
    let config = PaperConfig {
        seed: DEMO_SEED,
        ..PaperConfig::default()
    };
    let rules = sim_symbols().into_iter().map(|(r, _)| r);
    restored_paper(store, user, profile, config, rules, first_id).await
}

/// What every demo profile is started with.
struct DemoHost {
    store: Store,
    profiles: ProfileBuilder,
    /// The market's clock: every engine and strategy of the demo reads it.
    clock: Arc<VirtualClock>,
    plugins_dir: PathBuf,
}

/// How a profile starts when no plugin is bound to it: an example plugin with its settings, on
/// symbols of the demo market.
struct Defaults {
    name: String,
    plugin: &'static str,
    config: &'static [(&'static str, &'static str)],
    symbols: Vec<Symbol>,
}

/// A started profile: its loops' inputs and its place in the market.
struct Launched {
    loops: ProfileLoops,
    member: MarketMember,
}

/// One profile in the market: its paper account sees every candle (fills and marks), its
/// loops get its symbols'.
struct MarketMember {
    paper: Arc<PaperExchange>,
    symbols: Vec<Symbol>,
    candles: mpsc::Sender<Candle>,
}

impl DemoHost {
    /// Builds a profile's paper account (restored from the store) and its loops, set as the
    /// store says: the plugin bound through the API (else the default example plugin), its risk
    /// rules and its switches.
    async fn launch(
        &self,
        defaults: Defaults,
        stored: StoredProfile,
        user: UserId,
        profile: ProfileId,
    ) -> anyhow::Result<Launched> {
        // The demo trades on its paper exchange: stored exchange credentials are not used.
        let StoredProfile {
            row,
            binding,
            credentials: _,
            host_account: _,
            // The engine reads its quarantine itself, at recovery and before each pass.
            quarantine_clear_requested: _,
        } = stored;
        let paper = demo_paper(&self.store, user, profile, self.clock.now_ms()).await?;
        let (candle_tx, candles) = mpsc::channel(CANDLE_QUEUE_MAX);
        let events = paper.user_events().await?;
        let plugin = self
            .profiles
            .bound_or(binding, self.example_plugin(&defaults))
            .await?;
        let loops = self.profiles.loops(ProfileParts {
            profile,
            user,
            name: defaults.name,
            symbols: defaults.symbols.clone(),
            limits: row.risk_limits,
            paused: row.paused,
            killed: row.killed,
            plugin,
            engine: EngineConfig::default(),
            store: self.store.clone(),
            exchange: paper.clone(),
            clock: self.clock.clone(),
            owner: OwnerToken::new_random(),
            history: None,
            candles,
            events,
        });
        Ok(Launched {
            loops,
            member: MarketMember {
                paper,
                symbols: defaults.symbols,
                candles: candle_tx,
            },
        })
    }

    /// The default example plugin of `defaults`, read from the plugins directory.
    async fn example_plugin(&self, defaults: &Defaults) -> anyhow::Result<ProfilePlugin> {
        let path = self.plugins_dir.join(defaults.plugin);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "reading plugin {}: build the example plugins first with scripts/build-plugins",
                path.display()
            )
        })?;
        let version = self
            .profiles
            .version(bytes)
            .await
            .with_context(|| format!("loading {}", path.display()))?;
        let config = defaults
            .config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()));
        Ok(ProfilePlugin {
            version,
            config: config.collect(),
            name: defaults.plugin.to_owned(),
        })
    }
}

struct MarketRun {
    members: Vec<MarketMember>,
    /// Profiles started after the market: they join at the next candle.
    joining: mpsc::UnboundedReceiver<MarketMember>,
    clock: Arc<VirtualClock>,
    speed_ms: u64,
    state: DemoState,
    data_dir: PathBuf,
    probe: Arc<MarketProbe>,
    stop: watch::Receiver<bool>,
}

/// One candle per symbol every `speed_ms`: each paper account sees every candle (fills and
/// marks), each profile gets its own symbols'.
async fn run_market(mut run: MarketRun) -> anyhow::Result<()> {
    let mut source = CandleSource::new(&SimConfig::new(
        DEMO_SEED ^ run.state.next_open_time_ms as u64,
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(run.speed_ms));
    loop {
        tokio::select! {
            biased;
            _ = run.stop.wait_for(|stopped| *stopped) => return Ok(()),
            _ = tick.tick() => {}
        }
        while let Ok(member) = run.joining.try_recv() {
            run.members.push(member);
        }
        let open_ms = run.state.next_open_time_ms;
        let span = (open_ms, open_ms + CANDLE_MS);
        let candles = source.next(span).context("the random walk never ends")?;
        run.clock.advance_to(span.1);
        for candle in &candles {
            for member in &run.members {
                member.paper.feed_candle(candle).await?;
            }
            for member in &run.members {
                if member.symbols.contains(&candle.symbol) {
                    // A closed receiver means its profile task ended; the loops report that.
                    let _ = member.candles.send(candle.clone()).await;
                }
            }
        }
        run.state.next_open_time_ms = span.1;
        run.state.save(&run.data_dir)?;
        run.probe.record(wall_now_ms());
    }
}

/// The exchange as the health endpoint sees it: candles are arriving.
#[derive(Debug, Default)]
struct MarketProbe {
    last_candle_ms: std::sync::atomic::AtomicI64,
}

impl MarketProbe {
    fn record(&self, now_ms: i64) {
        self.last_candle_ms
            .store(now_ms, std::sync::atomic::Ordering::Release);
    }
}

/// Candles older than this mean the market feed has stopped.
const MARKET_STALL_MS: i64 = 60_000;

#[async_trait::async_trait]
impl HealthProbe for MarketProbe {
    fn name(&self) -> &'static str {
        "exchange"
    }

    async fn check(&self) -> Result<serde_json::Value, String> {
        let last = self
            .last_candle_ms
            .load(std::sync::atomic::Ordering::Acquire);
        let lag_ms = wall_now_ms() - last;
        if last != 0 && lag_ms > MARKET_STALL_MS {
            return Err(format!("no candle for {lag_ms} ms"));
        }
        Ok(serde_json::json!({"kind": "paper", "last_candle_ms": last, "lag_ms": lag_ms}))
    }
}

/// Plugin fault counts per profile; failing while any profile's plugin is faulted.
struct PluginProbe {
    engine: PluginEngine,
    profiles: Vec<(String, ProfileId)>,
}

#[async_trait::async_trait]
impl HealthProbe for PluginProbe {
    fn name(&self) -> &'static str {
        "plugins"
    }

    async fn check(&self) -> Result<serde_json::Value, String> {
        let mut faults = serde_json::Map::new();
        for (name, profile) in &self.profiles {
            let counts: Vec<serde_json::Value> = self
                .engine
                .fault_counts(*profile)
                .into_iter()
                .map(|(digest, counts)| serde_json::json!({"digest": digest.to_string(), "faults": counts}))
                .collect();
            faults.insert(name.clone(), counts.into());
        }
        Ok(faults.into())
    }
}
