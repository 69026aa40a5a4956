//! The host's per-profile loops and the health they report.
//!
//! One tokio task per profile owns its [`ProfileEngine`] and `select!`s, in this order, over a
//! shutdown signal, the exchange's user events (the monitor loop), the candle channel (the
//! trading loop) and a reconciliation interval. A step, once picked, runs to its end: shutdown
//! is only seen between steps, so nothing is left half-written. Restart recovery
//! ([`ProfileEngine::recover`]) runs before the first decision, and `keel_ready` turns 1 only
//! after every profile has recovered.

pub mod cluster;
pub mod command;
pub mod control;
pub mod http;
pub mod metered;
pub mod stored;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_kernel::engine::ProfileEngine;
use keel_kernel::exchange::UserEvent;
use keel_kernel::ids::ProfileId;
use keel_kernel::market::Candle;
use keel_kernel::metrics::Metrics;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The loops every profile runs; their names are the `loop` label of the loop metrics.
pub const LOOP_NAMES: [&str; 3] = ["trading", "monitor", "reconciliation"];

/// Most user events the monitor loop applies in one iteration before the other loops get a turn.
pub const MONITOR_BATCH_MAX: usize = 64;

/// How often an idle monitor loop reports that it is alive.
pub const MONITOR_IDLE_TICK_MS: u64 = 1_000;

/// Timing of the loops.
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    /// Time between reconciliation passes (one also runs at start, inside recovery).
    pub reconcile_interval_ms: u64,
    /// A loop whose last iteration is older than this is reported stalled (per loop name).
    pub trading_stall_ms: u64,
    /// Stall threshold of the monitor loop.
    pub monitor_stall_ms: u64,
    /// Stall threshold of the reconciliation loop.
    pub reconciliation_stall_ms: u64,
}

impl LoopConfig {
    /// The stall threshold of the loop `name`.
    pub fn stall_ms(&self, name: &str) -> u64 {
        match name {
            "trading" => self.trading_stall_ms,
            "monitor" => self.monitor_stall_ms,
            _ => self.reconciliation_stall_ms,
        }
    }
}

/// The last iteration of one loop of one profile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopRun {
    /// Wall time of the end of the last iteration, ms since the epoch (0: never ran).
    pub last_run_ms: i64,
    /// The error of the last iteration, if it failed.
    pub last_error: Option<String>,
}

/// What the loops report to the health endpoint, shared between the tasks and the server.
#[derive(Debug, Default)]
pub struct LoopHealth {
    runs: Mutex<HashMap<(ProfileId, &'static str), LoopRun>>,
    snapshots: Mutex<HashMap<ProfileId, ProfileSnapshot>>,
    recovered: Mutex<Vec<ProfileId>>,
    expected_profiles: Mutex<usize>,
    ready: AtomicBool,
    live: std::sync::OnceLock<Arc<crate::live::Bus>>,
}

/// What one profile looked like after its last step.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSnapshot {
    /// The profile's owner.
    pub user: keel_kernel::ids::UserId,
    /// Paused, killed or quarantined.
    pub controls: keel_kernel::engine::ProfileControls,
    /// Why entries are blocked, if they are.
    pub entry_block: Option<keel_kernel::risk::EntryBlock>,
    /// Free capital after the step.
    pub capital_free: rust_decimal::Decimal,
}

impl LoopHealth {
    /// Health for `profiles` profiles: ready once each has recovered.
    pub fn new(profiles: usize) -> Self {
        let health = LoopHealth::default();
        *health.expected_profiles.lock().expect("lock poisoned") = profiles;
        health
    }

    /// Makes the loops started with this health publish their steps to `bus`.
    pub fn publish_to(&self, bus: Arc<crate::live::Bus>) {
        let _ = self.live.set(bus);
    }

    /// Sets how many profiles must recover before the host is ready (an instance of several
    /// learns it after its first look at the directory); ready at once when they already have.
    pub fn expect_profiles(&self, profiles: usize, metrics: &Metrics) {
        *self.expected_profiles.lock().expect("lock poisoned") = profiles;
        if self.recovered.lock().expect("lock poisoned").len() >= profiles {
            self.ready.store(true, Ordering::Release);
            metrics.ready.set(1);
        }
    }

    /// Forgets a profile this instance no longer runs (its lease moved to another instance).
    pub fn forget(&self, profile: ProfileId) {
        let mut runs = self.runs.lock().expect("lock poisoned");
        runs.retain(|(p, _), _| *p != profile);
        drop(runs);
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.remove(&profile);
        drop(snapshots);
        let mut recovered = self.recovered.lock().expect("lock poisoned");
        recovered.retain(|p| *p != profile);
    }

    /// Whether every profile has finished restart recovery.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The last run of every loop of every profile.
    pub fn runs(&self) -> Vec<(ProfileId, &'static str, LoopRun)> {
        let runs = self.runs.lock().expect("lock poisoned");
        runs.iter().map(|((p, l), r)| (*p, *l, r.clone())).collect()
    }

    /// The last snapshot of every profile.
    pub fn snapshots(&self) -> Vec<(ProfileId, ProfileSnapshot)> {
        let snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.iter().map(|(p, s)| (*p, s.clone())).collect()
    }

    fn record(&self, profile: ProfileId, name: &'static str, error: Option<String>) -> LoopRun {
        let run = LoopRun {
            last_run_ms: wall_now_ms(),
            last_error: error,
        };
        let mut runs = self.runs.lock().expect("lock poisoned");
        runs.insert((profile, name), run.clone());
        run
    }

    fn snapshot(&self, engine: &ProfileEngine) {
        let snapshot = ProfileSnapshot {
            user: engine.user(),
            controls: engine.controls(),
            entry_block: engine.entry_block(),
            capital_free: engine.book().capital.free(),
        };
        let mut snapshots = self.snapshots.lock().expect("lock poisoned");
        snapshots.insert(engine.profile(), snapshot);
    }

    fn mark_recovered(&self, profile: ProfileId, metrics: &Metrics) {
        let mut recovered = self.recovered.lock().expect("lock poisoned");
        if !recovered.contains(&profile) {
            recovered.push(profile);
        }
        if recovered.len() >= *self.expected_profiles.lock().expect("lock poisoned") {
            self.ready.store(true, Ordering::Release);
            metrics.ready.set(1);
        }
    }
}

/// Wall time in ms since the epoch.
pub fn wall_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One profile's inputs: its engine and the channels that feed it.
pub struct ProfileLoops {
    /// The engine the task owns.
    pub engine: ProfileEngine,
    /// Closed candles for the trading loop.
    pub candles: mpsc::Receiver<Candle>,
    /// The exchange's user events for the monitor loop.
    pub events: mpsc::Receiver<UserEvent>,
    /// Commands from the API ([`control::LoopControl::register`]), applied between steps.
    pub commands: mpsc::Receiver<control::Command>,
}

/// The running loops of every profile.
pub struct Loops {
    tasks: JoinSet<anyhow::Result<()>>,
    shutdown: watch::Sender<bool>,
    config: LoopConfig,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
}

impl Loops {
    /// Starts one task per profile. Each recovers before its first decision.
    pub fn start(
        profiles: Vec<ProfileLoops>,
        config: LoopConfig,
        metrics: Arc<Metrics>,
        health: Arc<LoopHealth>,
    ) -> Loops {
        metrics.ready.set(0);
        let (shutdown, _) = watch::channel(false);
        let mut loops = Loops {
            tasks: JoinSet::new(),
            shutdown,
            config,
            metrics,
            health,
        };
        for profile in profiles {
            loops.add(profile);
        }
        loops
    }

    /// Starts one more profile's task beside the running ones; it recovers before its first
    /// decision. Readiness counts it once [`LoopHealth::expect_profiles`] is told.
    pub fn add(&mut self, profile: ProfileLoops) {
        let engine = &profile.engine;
        let task = ProfileTask {
            config: self.config,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.subscribe(),
            feed: self
                .health
                .live
                .get()
                .map(|bus| bus.feed(engine.profile(), engine.user())),
        };
        self.tasks.spawn(task.run(profile));
    }

    /// Asks every task to stop after its current step and waits for them.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined.context("a profile task panicked").and_then(|r| r);
            if let Err(error) = result {
                tracing::error!(error = %format!("{error:#}"), "profile task failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until a task ends on its own (an error: tasks only end when told to).
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(Ok(Err(error))) => error,
            Some(Ok(Ok(()))) => anyhow::anyhow!("a profile task ended without being told to"),
            Some(Err(error)) => anyhow::anyhow!("a profile task panicked: {error}"),
            None => std::future::pending().await,
        }
    }
}

struct ProfileTask {
    config: LoopConfig,
    metrics: Arc<Metrics>,
    health: Arc<LoopHealth>,
    shutdown: watch::Receiver<bool>,
    feed: Option<crate::live::ProfileFeed>,
}

impl ProfileTask {
    async fn run(mut self, mut inputs: ProfileLoops) -> anyhow::Result<()> {
        let profile = inputs.engine.profile();
        let report = inputs
            .engine
            .recover()
            .await
            .with_context(|| format!("restart recovery of profile {profile}"))?;
        tracing::info!(profile_id = %profile, quarantined = report.reconciliation.quarantined, "profile recovered");
        self.health.snapshot(&inputs.engine);
        for name in LOOP_NAMES {
            let run = self.health.record(profile, name, None);
            self.beat(name, Duration::ZERO);
            self.publish(
                &mut inputs.engine,
                crate::live::StepReport {
                    loop_name: name,
                    run: Some(run),
                    ..Default::default()
                },
            )
            .await;
        }
        self.health.mark_recovered(profile, &self.metrics);
        self.stream_connected(true);
        let mut reconcile =
            tokio::time::interval(Duration::from_millis(self.config.reconcile_interval_ms));
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reconcile.tick().await; // the first tick is immediate; recovery just reconciled
        let mut idle = tokio::time::interval(Duration::from_millis(MONITOR_IDLE_TICK_MS));
        let mut events_closed = false;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                event = inputs.events.recv(), if !events_closed => match event {
                    Some(event) => self.monitor(&mut inputs, event).await,
                    None => {
                        // The exchange dropped the stream: reconciliation still finds what
                        // happened, and the health endpoint says so.
                        events_closed = true;
                        self.stream_connected(false);
                        self.health.record(profile, "monitor", Some("the user event stream closed".into()));
                    }
                },
                Some(candle) = inputs.candles.recv() => {
                    self.trade(&mut inputs.engine, &candle).await;
                }
                Some(command) = inputs.commands.recv() => {
                    self.command(&mut inputs.engine, command).await;
                }
                _ = reconcile.tick() => {
                    // The pass records its own health and metrics; nobody waits for it here.
                    let _ = self.reconcile(&mut inputs.engine).await;
                }
                _ = idle.tick(), if !events_closed => {
                    let run = self.health.record(profile, "monitor", None);
                    self.beat("monitor", Duration::ZERO);
                    self.publish(&mut inputs.engine, crate::live::StepReport { loop_name: "monitor", run: Some(run), ..Default::default() }).await;
                }
            }
        }
        tracing::info!(profile_id = %profile, "profile loops stopped");
        Ok(())
    }

    async fn monitor(&mut self, inputs: &mut ProfileLoops, first: UserEvent) {
        let started = Instant::now();
        let mut error = None;
        let mut next = Some(first);
        let mut applied = Vec::new();
        let mut fault = None;
        while let Some(event) = next.take() {
            match inputs.engine.on_user_event(&event).await {
                Ok(outcome) => fault = outcome.fault.or(fault),
                Err(e) => {
                    error = Some(e.to_string());
                    tracing::error!(profile_id = %inputs.engine.profile(), error = %e, "monitor step failed; reconciliation will repair");
                }
            }
            applied.push(event);
            if applied.len() < MONITOR_BATCH_MAX {
                next = inputs.events.try_recv().ok();
            }
        }
        let run = self.finish(&inputs.engine, "monitor", started, error);
        let step = crate::live::StepReport {
            loop_name: "monitor",
            run: Some(run),
            user_events: &applied,
            fault: fault.as_ref(),
            ..Default::default()
        };
        self.publish(&mut inputs.engine, step).await;
    }

    async fn trade(&mut self, engine: &mut ProfileEngine, candle: &Candle) {
        let started = Instant::now();
        let (error, outcome) = match engine.on_candle(candle).await {
            Ok(outcome) => {
                if !outcome.orders_sent.is_empty() {
                    tracing::info!(profile_id = %engine.profile(), orders = outcome.orders_sent.len(), "orders sent");
                }
                (None, outcome)
            }
            Err(e) => {
                tracing::error!(profile_id = %engine.profile(), error = %e, "trading step failed");
                (Some(e.to_string()), Default::default())
            }
        };
        let run = self.finish(engine, "trading", started, error);
        let step = crate::live::StepReport {
            loop_name: "trading",
            run: Some(run),
            candle: Some(candle),
            orders_sent: &outcome.orders_sent,
            fault: outcome.fault.as_ref(),
            ..Default::default()
        };
        self.publish(engine, step).await;
    }

    /// Tells the live feed, if there is one, what the step changed.
    async fn publish(&mut self, engine: &mut ProfileEngine, step: crate::live::StepReport<'_>) {
        if let Some(feed) = &mut self.feed {
            feed.after_step(engine, step).await;
        }
    }

    /// One reconciliation pass; its result label, or its error.
    async fn reconcile(&mut self, engine: &mut ProfileEngine) -> Result<&'static str, String> {
        let started = Instant::now();
        let result = match engine.reconcile().await {
            Ok(report) => {
                if report.is_clean() {
                    self.metrics
                        .reconciliation_last_clean_pass_timestamp_seconds
                        .set(wall_now_ms() as f64 / 1e3);
                }
                Ok(report.result_label())
            }
            Err(e) => Err(e.to_string()),
        };
        let run = self.finish(engine, "reconciliation", started, result.clone().err());
        let step = crate::live::StepReport {
            loop_name: "reconciliation",
            run: Some(run),
            ..Default::default()
        };
        self.publish(engine, step).await;
        result
    }

    async fn command(&mut self, engine: &mut ProfileEngine, command: control::Command) {
        match command {
            control::Command::Change(change) => {
                control::apply(change, engine);
                self.health.snapshot(engine);
                // The feed sees the new status at once, not at the next candle.
                let step = crate::live::StepReport {
                    loop_name: "trading",
                    ..Default::default()
                };
                self.publish(engine, step).await;
            }
            control::Command::Reconcile(reply) => {
                let result = self.reconcile(engine).await;
                // The caller may have gone; the pass counts anyway.
                let _ = reply.send(result);
            }
        }
    }

    fn finish(
        &self,
        engine: &ProfileEngine,
        name: &'static str,
        started: Instant,
        error: Option<String>,
    ) -> LoopRun {
        let run = self.health.record(engine.profile(), name, error);
        self.health.snapshot(engine);
        self.beat(name, started.elapsed());
        run
    }

    fn stream_connected(&self, connected: bool) {
        self.metrics
            .exchange_stream_connected
            .with_label_values(&["user"])
            .set(i64::from(connected));
        self.metrics
            .exchange_stream_reconnects_total
            .with_label_values(&["user"])
            .inc_by(0);
    }

    fn beat(&self, name: &str, took: Duration) {
        self.metrics
            .loop_heartbeat_timestamp_seconds
            .with_label_values(&[name])
            .set(wall_now_ms() as f64 / 1e3);
        self.metrics
            .loop_iteration_duration_seconds
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
    }
}

/// The health of one loop name across profiles: the oldest last run decides.
#[derive(Debug, Clone, Serialize)]
pub struct LoopStatus {
    /// `ok`, `stalled`, `failing` or `not_started`.
    pub state: &'static str,
    /// The oldest last run over the profiles, ms since the epoch.
    pub last_run_ms: i64,
    /// How long ago that was.
    pub lag_ms: i64,
    /// The stall threshold.
    pub stall_ms: u64,
    /// The last error, if a profile's last iteration failed.
    pub last_error: Option<String>,
}

/// The status of each loop name.
pub fn loop_statuses(health: &LoopHealth, config: &LoopConfig) -> Vec<(&'static str, LoopStatus)> {
    let now_ms = wall_now_ms();
    let runs = health.runs();
    LOOP_NAMES
        .iter()
        .map(|name| {
            let mine: Vec<&LoopRun> = runs
                .iter()
                .filter(|(_, l, _)| l == name)
                .map(|(_, _, r)| r)
                .collect();
            let stall_ms = config.stall_ms(name);
            let oldest = mine.iter().map(|r| r.last_run_ms).min().unwrap_or(0);
            let last_error = mine.iter().find_map(|r| r.last_error.clone());
            let lag_ms = if oldest == 0 { 0 } else { now_ms - oldest };
            let state = if mine.is_empty() {
                "not_started"
            } else if last_error.is_some() {
                "failing"
            } else if lag_ms > stall_ms as i64 {
                "stalled"
            } else {
                "ok"
            };
            let status = LoopStatus {
                state,
                last_run_ms: oldest,
                lag_ms,
                stall_ms,
                last_error,
            };
            (*name, status)
        })
        .collect()
}
