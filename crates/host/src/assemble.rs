//! The one place the host is assembled, for `keel serve` and `keel demo` alike.
//!
//! A [`Host`] is built from a [`HostSetup`] — the store, the loops' thresholds, the keys and the
//! API's limits, which is all the two commands choose differently here — and holds what every
//! profile's loops are built with: the metrics, the plugin engine, the host switches, the API's
//! loop control, the live bus and the loop health. Each command then starts its profiles its
//! own way (`keel serve` shares the directory out by lease, `keel demo` runs its own market),
//! building each profile's loops through the host's [`ProfileBuilder`], and hands the task that
//! runs them to [`Host::run`], which serves the API and the operational endpoints until SIGTERM
//! or Ctrl-C and then stops everything in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use keel_api::auth::JwtKeys;
use keel_api::health::{LoopConfig, LoopHealth};
use keel_api::live::Bus;
use keel_api::{ApiState, BodyLimits, CredentialsKey, Quotas};
use keel_kernel::engine::{
    CandleHistory, Clock, EngineConfig, HostSwitches, ProfileEngine, ProfileSpec,
};
use keel_kernel::exchange::{Exchange, UserEvent};
use keel_kernel::ids::{ProfileId, Symbol, UserId, escape_unprintable};
use keel_kernel::lock::OwnerToken;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use keel_kernel::risk::RiskLimits;
use keel_kernel::store::Store;
use keel_runtime::{EngineSettings, InstanceSetup, PluginDigest, PluginEngine, PluginVersion};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::serve::ProfileLoops;
use crate::serve::control::{LoopControl, RunningPlugin};
use crate::serve::http::{AppState, HealthProbe};
use crate::serve::metered::MeteredStrategy;
use crate::serve::stored::BoundPlugin;

/// What `keel serve` and `keel demo` choose differently about the host itself.
pub struct HostSetup {
    /// How the command names itself in what it prints (`keel serve`).
    pub name: &'static str,
    /// The store every part reads and writes.
    pub store: Store,
    /// The loops' thresholds.
    pub loop_config: LoopConfig,
    /// The host-wide kill switch at start.
    pub kill_switch: bool,
    /// Profiles that must recover before the host is ready (`usize::MAX`: not known yet).
    pub profiles_expected: usize,
    /// The keys bearer tokens are signed and verified with.
    pub auth: JwtKeys,
    /// The key exchange credentials are sealed with.
    pub credentials: CredentialsKey,
    /// The largest bodies the API reads.
    pub limits: BodyLimits,
    /// What one user may store and run.
    pub quotas: Quotas,
    /// Serve the per-profile metric families without an operator's token.
    pub profile_labels_public: bool,
}

/// The host assembled, before it serves.
pub struct Host {
    name: &'static str,
    store: Store,
    loop_config: LoopConfig,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
    auth: JwtKeys,
    credentials: CredentialsKey,
    limits: BodyLimits,
    quotas: Quotas,
    probes: Vec<Arc<dyn HealthProbe>>,
    profile_labels_public: bool,
    profiles: ProfileBuilder,
    stop_tx: watch::Sender<bool>,
    /// Tasks that run beside the profiles until the host stops, by what they do.
    beside: Vec<(&'static str, JoinHandle<()>)>,
}

impl Host {
    /// The metrics (which observe the store), the plugin engine reporting to them, the host
    /// switches, the loop control, the live bus and the loop health publishing to it.
    pub fn new(setup: HostSetup) -> anyhow::Result<Host> {
        let metrics = Arc::new(Metrics::new());
        metrics.observe_store(&setup.store);
        let plugins = PluginEngine::reporting_to(EngineSettings::default(), &metrics)?;
        let switches = Arc::new(HostSwitches {
            kill: AtomicBool::new(setup.kill_switch),
        });
        let bus = Bus::new(
            setup.store.clone(),
            setup.loop_config,
            keel_api::live::QUEUE_MAX_DEFAULT,
        );
        let health = Arc::new(LoopHealth::new(setup.profiles_expected));
        health.publish_to(bus.clone());
        let (stop_tx, _) = watch::channel(false);
        Ok(Host {
            name: setup.name,
            store: setup.store,
            loop_config: setup.loop_config,
            health,
            auth: setup.auth,
            credentials: setup.credentials,
            limits: setup.limits,
            quotas: setup.quotas,
            probes: Vec::new(),
            profile_labels_public: setup.profile_labels_public,
            profiles: ProfileBuilder {
                plugins,
                control: Arc::new(LoopControl::new(switches.clone())),
                switches,
                metrics: metrics.clone(),
                bus,
                versions: Default::default(),
            },
            metrics,
            stop_tx,
            beside: Vec::new(),
        })
    }

    /// What every profile's loops are built with.
    pub fn profiles(&self) -> &ProfileBuilder {
        &self.profiles
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the loops report.
    pub fn health(&self) -> &Arc<LoopHealth> {
        &self.health
    }

    /// The keys bearer tokens are signed with.
    pub fn auth(&self) -> &JwtKeys {
        &self.auth
    }

    /// Has the health endpoint check `probe` too.
    pub fn add_probe(&mut self, probe: Arc<dyn HealthProbe>) {
        self.probes.push(probe);
    }

    /// Turns true when the host stops: every task it runs ends then.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Runs `task` beside the profiles; it must end once [`Host::stopping`] turns true, and is
    /// waited for after them.
    pub fn spawn_beside(
        &mut self,
        what: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.beside.push((what, tokio::spawn(task)));
    }

    /// Serves the API, the live feed and the operational endpoints on `listener` while
    /// `profiles` runs the profiles, until SIGTERM or Ctrl-C, or until `profiles` ends on its
    /// own. Then everything is told to stop (`profiles` must end once [`Host::stopping`] turns
    /// true: each profile finishes its current step), the server stops accepting, every task is
    /// waited for and the store is closed. The result is `profiles`'.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        profiles: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = self.stopping();
        let app = AppState {
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            loop_config: self.loop_config,
            store: self.store.clone(),
            probes: self.probes,
            auth: self.auth.clone(),
            profile_labels_public: self.profile_labels_public,
        };
        let api = ApiState {
            store: self.store.clone(),
            auth: self.auth.clone(),
            plugins: self.profiles.plugins.clone(),
            control: self.profiles.control.clone(),
            credentials: self.credentials,
            limits: self.limits,
            quotas: self.quotas,
            health: self.health.clone(),
        };
        let bus = self.profiles.bus.clone();
        let routes = crate::serve::http::router(app)
            .merge(keel_api::router(api))
            .merge(keel_api::live::router(bus.clone(), self.auth));
        let mut profiles = tokio::spawn(profiles);
        let server = tokio::spawn(serve(listener, routes, stop.clone()));
        let watch = tokio::spawn(keel_api::live::watch_host(
            bus,
            self.health,
            Some(self.profiles.switches.clone()),
            stop,
        ));
        let early = tokio::select! {
            signal = shutdown_signal() => { signal?; None }
            ended = &mut profiles => Some(ended),
        };
        tracing::info!("shutting down: each profile finishes its current step");
        self.stop_tx.send_replace(true);
        let ended = match early {
            Some(ended) => ended,
            None => profiles.await,
        };
        let result = ended.context("the profiles task panicked").and_then(|r| r);
        server.await.context("server task panicked")??;
        watch.await.context("host watch task panicked")?;
        for (what, task) in self.beside {
            task.await
                .with_context(|| format!("{what} task panicked"))?;
        }
        self.store.close().await;
        if result.is_ok() {
            println!("{}: stopped cleanly", self.name);
        }
        result
    }
}

/// Serves `routes` until `stop` turns true.
async fn serve(
    listener: tokio::net::TcpListener,
    routes: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .context("serving HTTP")
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

/// Builds a profile's loops the same way for every command: its strategy started from a
/// plugin, registered with the API's loop control, metered, in an engine set as the store
/// says, and its card on the live bus.
#[derive(Clone)]
pub struct ProfileBuilder {
    plugins: PluginEngine,
    control: Arc<LoopControl>,
    switches: Arc<HostSwitches>,
    metrics: Arc<Metrics>,
    bus: Arc<Bus>,
    /// Plugins loaded so far, by digest: each compiled once per process.
    versions: Arc<std::sync::Mutex<HashMap<PluginDigest, PluginVersion>>>,
}

/// The plugin a profile runs: its loaded version, the settings handed to its `init`, and its
/// name as the dashboard shows it.
pub struct ProfilePlugin {
    /// The loaded component.
    pub version: PluginVersion,
    /// The settings of its `init`.
    pub config: Vec<(String, String)>,
    /// Its name.
    pub name: String,
}

/// Everything one profile's loops are built from besides what the host holds.
pub struct ProfileParts {
    /// The profile.
    pub profile: ProfileId,
    /// Its owner.
    pub user: UserId,
    /// Its name on the dashboard.
    pub name: String,
    /// The symbols it trades.
    pub symbols: Vec<Symbol>,
    /// Its stored risk rules (conservative ones over `symbols` when it has none).
    pub limits: Option<RiskLimits>,
    /// Its entries paused, as stored.
    pub paused: bool,
    /// Its kill switch, as stored.
    pub killed: bool,
    /// What its strategy runs.
    pub plugin: ProfilePlugin,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The store its engine writes through.
    pub store: Store,
    /// The exchange account it trades on.
    pub exchange: Arc<dyn Exchange>,
    /// The clock of its engine and its strategy.
    pub clock: Arc<dyn Clock>,
    /// The owner of its entry locks.
    pub owner: OwnerToken,
    /// Recent candles shared with the host's other engines, when there are.
    pub history: Option<Arc<CandleHistory>>,
    /// Its closed candles.
    pub candles: mpsc::Receiver<Candle>,
    /// Its account's user events.
    pub events: mpsc::Receiver<UserEvent>,
}

impl ProfileBuilder {
    /// The plugin engine.
    pub fn plugins(&self) -> &PluginEngine {
        &self.plugins
    }

    /// The API's control of the running profiles.
    pub fn control(&self) -> &Arc<LoopControl> {
        &self.control
    }

    /// The host switches every engine reads.
    pub fn switches(&self) -> &Arc<HostSwitches> {
        &self.switches
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The plugin bound to the profile through the API, loaded; else `default`'s.
    pub async fn bound_or(
        &self,
        binding: Option<BoundPlugin>,
        default: impl Future<Output = anyhow::Result<ProfilePlugin>>,
    ) -> anyhow::Result<ProfilePlugin> {
        let Some(bound) = binding else {
            return default.await;
        };
        Ok(ProfilePlugin {
            version: self
                .version(bound.wasm)
                .await
                .with_context(|| format!("loading plugin {:?}", bound.name))?,
            config: bound.config,
            name: bound.name,
        })
    }

    /// The loaded version of a plugin's bytes: compiled once per process and digest, off the
    /// async threads (a large component compiles for seconds).
    pub async fn version(&self, wasm: Vec<u8>) -> anyhow::Result<PluginVersion> {
        let digest = PluginDigest::of(&wasm);
        if let Some(version) = self.versions.lock().expect("lock poisoned").get(&digest) {
            return Ok(version.clone());
        }
        let plugins = self.plugins.clone();
        let version = tokio::task::spawn_blocking(move || plugins.load(&wasm))
            .await
            .context("the plugin compile task")??;
        self.versions
            .lock()
            .expect("lock poisoned")
            .insert(digest, version.clone());
        Ok(version)
    }

    /// The profile's loops: its strategy started (a plugin that faults at start leaves the
    /// profile running without entries until a working one is bound), registered with the
    /// loop control, and its engine set as the store says; its card is on the live bus.
    pub fn loops(&self, parts: ProfileParts) -> ProfileLoops {
        let ProfileParts {
            profile,
            user,
            name,
            symbols,
            limits,
            paused,
            killed,
            plugin,
            engine,
            store,
            exchange,
            clock,
            owner,
            history,
            candles,
            events,
        } = parts;
        let setup = InstanceSetup::new(profile, clock.clone())
            .config(plugin.config)
            .name(plugin.name.as_str());
        let running = RunningPlugin {
            digest: plugin.version.digest().clone(),
            config: setup.config.clone(),
        };
        let (strategy, fault) = self.plugins.start_or_faulted(&plugin.version, setup);
        if let Some(fault) = fault {
            tracing::warn!(profile_id = %profile, plugin = %plugin.name, fault = %escape_unprintable(&fault.to_string()), "the plugin faulted at start: the profile runs without entries until a working plugin is bound");
        }
        let swap = strategy.swap_handle();
        let commands = self
            .control
            .register(profile, Some(swap.clone()), clock.clone());
        self.control.set_running(profile, running);
        let limits = limits.unwrap_or_else(|| RiskLimits::conservative(symbols.iter().cloned()));
        let mut engine = ProfileEngine::new(
            ProfileSpec {
                profile,
                user,
                limits,
            },
            engine,
            store,
            exchange,
            Box::new(MeteredStrategy::new(
                Box::new(strategy),
                self.metrics.clone(),
            )),
            clock,
            self.metrics.clone(),
            self.switches.clone(),
            owner,
        );
        if let Some(history) = history {
            engine.share_history(history);
        }
        engine.set_paused(paused);
        engine.set_killed(killed);
        self.bus.register(keel_api::live::ProfileInfo {
            profile,
            user,
            name,
            plugin: plugin.name,
            plugin_version: plugin.version.digest().to_string(),
            symbols,
        });
        ProfileLoops {
            engine,
            candles,
            events,
            commands,
            plugin: Some(swap),
        }
    }
}
